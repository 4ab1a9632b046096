// readtiles proves inclusion and consistency from a MAIP Ledger's C2SP tlog-tiles
// endpoints alone, with Go's golang.org/x/mod/sumdb/tlog and sumdb/note: a second
// implementation reading our tiles, not our proof endpoints. Input on stdin (JSON):
// {"base": ".../v1/log", "vkey": "...", "old_note": "...", "leaves": [{"index": I, "hash": "<base64>"}]}.
// Prints "ok", or what failed.
package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type leaf struct {
	Index int64  `json:"index"`
	Hash  string `json:"hash"`
}

type input struct {
	Base    string `json:"base"`
	Vkey    string `json:"vkey"`
	OldNote string `json:"old_note"`
	Leaves  []leaf `json:"leaves"`
}

type tileServer struct{ base string }

func (s *tileServer) Height() int { return 8 }

func (s *tileServer) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		// Go's sumdb names a tile tile/H/L/N[.p/W]; C2SP tlog-tiles drops the H.
		path := strings.Replace(t.Path(), "tile/8/", "tile/", 1)
		resp, err := http.Get(s.base + "/" + path)
		if err != nil {
			return nil, err
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != 200 {
			return nil, fmt.Errorf("%s: status %d", path, resp.StatusCode)
		}
		out[i] = data
	}
	return out, nil
}

func (s *tileServer) SaveTiles([]tlog.Tile, [][]byte) {}

func tree(v note.Verifier, text string) tlog.Tree {
	n, err := note.Open([]byte(text), note.VerifierList(v))
	check(err, "open checkpoint")
	lines := strings.Split(n.Text, "\n")
	size, err := strconv.ParseInt(lines[1], 10, 64)
	check(err, "checkpoint size")
	root, err := base64.StdEncoding.DecodeString(lines[2])
	check(err, "checkpoint root")
	var h tlog.Hash
	copy(h[:], root)
	return tlog.Tree{N: size, Hash: h}
}

func check(err error, what string) {
	if err != nil {
		fmt.Printf("%s: %v\n", what, err)
		os.Exit(1)
	}
}

func main() {
	var in input
	check(json.NewDecoder(os.Stdin).Decode(&in), "input")
	v, err := note.NewVerifier(in.Vkey)
	check(err, "vkey")
	resp, err := http.Get(in.Base + "/checkpoint")
	check(err, "fetch checkpoint")
	body, err := io.ReadAll(resp.Body)
	check(err, "read checkpoint")
	latest := tree(v, string(body))
	old := tree(v, in.OldNote)

	// TileHashReader checks every tile it loads against the signed tree hash.
	r := tlog.TileHashReader(latest, &tileServer{in.Base})
	root, err := tlog.TreeHash(latest.N, r)
	check(err, "tree hash from tiles")
	if root != latest.Hash {
		fmt.Println("tree hash from tiles differs from the checkpoint's")
		os.Exit(1)
	}
	for _, l := range in.Leaves {
		raw, err := base64.StdEncoding.DecodeString(l.Hash)
		check(err, "leaf hash")
		var h tlog.Hash
		copy(h[:], raw)
		p, err := tlog.ProveRecord(latest.N, l.Index, r)
		check(err, "prove record")
		check(tlog.CheckRecord(p, latest.N, latest.Hash, l.Index, h), "check record")
		h[0] ^= 1
		if tlog.CheckRecord(p, latest.N, latest.Hash, l.Index, h) == nil {
			fmt.Println("a flipped leaf hash verified")
			os.Exit(1)
		}
	}
	tp, err := tlog.ProveTree(latest.N, old.N, r)
	check(err, "prove tree")
	check(tlog.CheckTree(tp, latest.N, latest.Hash, old.N, old.Hash), "check tree")
	fmt.Println("ok")
}
