// Checks MAIP Ledger output with Go's golang.org/x/mod/sumdb/note and sumdb/tlog.
// Reads one JSON case on stdin; prints "ok" and exits 0, or prints the error and exits 1.
package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type input struct {
	Vkey        string   `json:"vkey"`
	Skey        string   `json:"skey"`
	Note        string   `json:"note"`
	OldNote     string   `json:"old_note"`
	Leaf        string   `json:"leaf"`
	LeafIndex   int64    `json:"leaf_index"`
	Inclusion   []string `json:"inclusion_proof"`
	Consistency []string `json:"consistency_proof"`
}

func hashes(in []string) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(in))
	for i, s := range in {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(b) != 32 {
			return nil, fmt.Errorf("bad hash %d", i)
		}
		copy(out[i][:], b)
	}
	return out, nil
}

// checkpoint opens a signed checkpoint and returns its size and root.
func checkpoint(text string, v note.Verifier) (int64, tlog.Hash, error) {
	n, err := note.Open([]byte(text), note.VerifierList(v))
	if err != nil {
		return 0, tlog.Hash{}, err
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 || lines[0] != v.Name() {
		return 0, tlog.Hash{}, fmt.Errorf("bad checkpoint body %q", n.Text)
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		return 0, tlog.Hash{}, err
	}
	h, err := tlog.ParseHash(lines[2])
	return size, h, err
}

func run() error {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		return err
	}
	v, err := note.NewVerifier(in.Vkey)
	if err != nil {
		return err
	}
	size, root, err := checkpoint(in.Note, v)
	if err != nil {
		return err
	}
	leaf, err := base64.StdEncoding.DecodeString(in.Leaf)
	if err != nil {
		return err
	}
	proof, err := hashes(in.Inclusion)
	if err != nil {
		return err
	}
	if err := tlog.CheckRecord(proof, size, root, in.LeafIndex, tlog.RecordHash(leaf)); err != nil {
		return fmt.Errorf("inclusion: %v", err)
	}
	oldSize, oldRoot, err := checkpoint(in.OldNote, v)
	if err != nil {
		return err
	}
	cons, err := hashes(in.Consistency)
	if err != nil {
		return err
	}
	if err := tlog.CheckTree(cons, size, root, oldSize, oldRoot); err != nil {
		return fmt.Errorf("consistency: %v", err)
	}
	// Go signs the same body with our key file: Ed25519 is deterministic, so the notes match.
	s, err := note.NewSigner(in.Skey)
	if err != nil {
		return err
	}
	opened, _ := note.Open([]byte(in.Note), note.VerifierList(v))
	signed, err := note.Sign(&note.Note{Text: opened.Text}, s)
	if err != nil {
		return err
	}
	if string(signed) != in.Note {
		return fmt.Errorf("go signs differently:\n%s", signed)
	}
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	fmt.Println("ok")
}
