"""What a registered agent's ``openai`` provider may reach, and which keys it may send.

Whoever registers an agent picks its ``base_url`` and the name of the environment
variable its API key is read from. Behind a multi-tenant server that is a tenant, and
without a policy it could name any variable of the server's environment (a JWT secret,
cloud credentials) and have it sent, as a bearer token, to a host of its choosing; or
point the provider at the server's own network and read the answer back from the log.

A :class:`ProviderPolicy` closes both:

- ``allow_hosts`` (``None``: any host) and ``allow_private_hosts`` bound where the
  provider connects, checked as the ``http`` tool's are (``ledger/orchestration/_net.py``);
- ``keys`` names the only variables a provider may read, each with the hosts its key
  may be sent to.

The engine checks an agent's config against the policy when the agent is registered
(an error naming the field) and again before every call, so tightening the policy also
holds for agents registered before. An engine without a policy trusts whoever registers
agents, as a library embedded in one service does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ledger.orchestration._net import GuardedResolver, check_url
from ledger.orchestration.errors import SSRFBlockedError, WorkflowValidationError
from ledger.orchestration.providers.openai import OpenAIConfig

__all__ = ["ProviderPolicy"]


def _hosts(hosts: Iterable[str]) -> frozenset[str]:
    return frozenset(h.lower().rstrip(".") for h in hosts)


@dataclass(frozen=True)
class ProviderPolicy:
    #: Hosts a provider's ``base_url`` may name; ``None``: any host with public addresses.
    allow_hosts: frozenset[str] | None = None
    #: Hosts that may resolve to private or loopback addresses (a vLLM or Ollama nearby).
    allow_private_hosts: frozenset[str] = frozenset()
    #: Environment variables a provider may read its key from, each with the hosts that
    #: key may be sent to. A variable not named here is never read.
    keys: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        *,
        allow_hosts: Iterable[str] | None = None,
        allow_private_hosts: Iterable[str] = (),
        keys: Mapping[str, Iterable[str]] | None = None,
    ) -> ProviderPolicy:
        """A policy from plain iterables of host names (case and a final dot ignored)."""
        return cls(
            None if allow_hosts is None else _hosts(allow_hosts),
            _hosts(allow_private_hosts),
            {name: _hosts(hosts) for name, hosts in (keys or {}).items()},
        )

    def resolver(self) -> GuardedResolver:
        """The resolver the providers' HTTP session must connect through."""
        return GuardedResolver(self.allow_hosts, self.allow_private_hosts)

    def check(self, config: OpenAIConfig) -> None:
        """Raise :class:`WorkflowValidationError` naming the field ``config`` breaks."""
        try:
            host = check_url(config.base_url, self.allow_hosts, self.allow_private_hosts)
        except SSRFBlockedError as e:
            raise WorkflowValidationError(
                f"the provider may not connect there: {e}", field="provider.base_url"
            ) from e
        name = config.api_key_env
        if name is None:
            return
        hosts = self.keys.get(name)
        if hosts is None:
            raise WorkflowValidationError(
                f"{name!r} is not a provider key this server allows",
                field="provider.api_key_env",
            )
        if host not in hosts:
            raise WorkflowValidationError(
                f"the key in {name!r} may not be sent to {urlsplit(config.base_url).hostname!r}",
                field="provider.base_url",
            )
