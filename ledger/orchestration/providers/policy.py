"""What a registered agent's ``openai`` provider may reach, and which keys it may send.

Whoever registers an agent picks its ``base_url`` and the name of the environment
variable its API key is read from. Behind a multi-tenant server that is a tenant, and
without a policy it could name any variable of the server's environment (a JWT secret,
cloud credentials) and have it sent, as a bearer token, to a host of its choosing; or
point the provider at the server's own network and read the answer back from the log.

A :class:`ProviderPolicy` closes both:

- ``allow_hosts`` (``None``: any host) and ``allow_private_hosts`` bound where the
  provider connects, checked as the ``http`` tool's are (``ledger/orchestration/_net.py``);
- ``keys`` names the only variables a provider may read, each with the origins
  (scheme, host and port, RFC 6454) its key may be sent to: a key allowed for
  ``https://api.openai.com`` is not sent in clear to ``http://api.openai.com``, nor to
  another port of the same host. An origin written without a scheme is ``https``.

The engine checks an agent's config against the policy when the agent is registered
(an error naming the field) and again before every call, so tightening the policy also
holds for agents registered before. An engine without a policy trusts whoever registers
agents, as a library embedded in one service does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ledger.orchestration._net import GuardedResolver, check_url, url_origin
from ledger.orchestration.errors import SSRFBlockedError, WorkflowValidationError
from ledger.orchestration.providers.openai import OpenAIConfig

__all__ = ["ProviderPolicy", "origin"]


def _hosts(hosts: Iterable[str]) -> frozenset[str]:
    return frozenset(h.lower().rstrip(".") for h in hosts)


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url``, the port filled in; ``https`` if it names no
    scheme. :class:`SSRFBlockedError` if it is not an ``http``/``https`` URL."""
    scheme, host, port = url_origin(url if "://" in url else "https://" + url)
    return f"{scheme}://{host}:{port}"


def _origins(urls: Iterable[str]) -> frozenset[str]:
    try:
        return frozenset(origin(u) for u in urls)
    except SSRFBlockedError as e:
        raise ValueError(f"not an origin: {e}") from e


@dataclass(frozen=True)
class ProviderPolicy:
    #: Hosts a provider's ``base_url`` may name; ``None``: any host with public addresses.
    allow_hosts: frozenset[str] | None = None
    #: Hosts that may resolve to private or loopback addresses (a vLLM or Ollama nearby).
    allow_private_hosts: frozenset[str] = frozenset()
    #: Environment variables a provider may read its key from, each with the origins
    #: (``scheme://host:port``) that key may be sent to. A variable not named here is
    #: never read.
    keys: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        *,
        allow_hosts: Iterable[str] | None = None,
        allow_private_hosts: Iterable[str] = (),
        keys: Mapping[str, Iterable[str]] | None = None,
    ) -> ProviderPolicy:
        """A policy from plain iterables of host names (case and a final dot ignored) and,
        for ``keys``, of origins (``https://api.openai.com``, ``http://127.0.0.1:8000``;
        no scheme means ``https``). ``ValueError`` if one is not an origin."""
        return cls(
            None if allow_hosts is None else _hosts(allow_hosts),
            _hosts(allow_private_hosts),
            {name: _origins(urls) for name, urls in (keys or {}).items()},
        )

    def resolver(self) -> GuardedResolver:
        """The resolver the providers' HTTP session must connect through."""
        return GuardedResolver(self.allow_hosts, self.allow_private_hosts)

    def check(self, config: OpenAIConfig) -> None:
        """Raise :class:`WorkflowValidationError` naming the field ``config`` breaks."""
        try:
            check_url(config.base_url, self.allow_hosts, self.allow_private_hosts)
        except SSRFBlockedError as e:
            raise WorkflowValidationError(
                f"the provider may not connect there: {e}", field="provider.base_url"
            ) from e
        name = config.api_key_env
        if name is None:
            return
        origins = self.keys.get(name)
        if origins is None:
            raise WorkflowValidationError(
                f"{name!r} is not a provider key this server allows",
                field="provider.api_key_env",
            )
        where = origin(config.base_url)
        if where not in origins:
            raise WorkflowValidationError(
                f"the key in {name!r} may not be sent to {where} (it may go to "
                f"{', '.join(sorted(origins))})",
                field="provider.base_url",
            )
