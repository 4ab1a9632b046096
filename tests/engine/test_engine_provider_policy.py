"""The provider policy (where an agent's ``openai`` provider may connect, which keys it
may send where) and the outbound HTTP guards it shares with the ``http`` tool, against
real HTTP servers on loopback."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from engine_helpers import TENANT, FakeOpenAI, Harness, completion

from ledger.orchestration import Engine, ProviderPolicy, WorkflowValidationError
from ledger.orchestration.providers.openai import MAX_DETAIL_CHARS
from ledger.orchestration.tools import is_public_address

SECRET = "sk-policy-SECRET-0123456789abcdef0123"


def _loopback(server: FakeOpenAI) -> ProviderPolicy:
    """Loopback may be reached, and KEY sent to the server's origin."""
    return ProviderPolicy.of(allow_private_hosts=["127.0.0.1"], keys={"KEY": [server.url]})


def _openai(server: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {"kind": "openai", "base_url": server.url, **extra}


async def _run(engine: Engine, agent_id: str) -> Any:
    started = await engine.execute(TENANT, agent_id=agent_id, input="hi")
    return await engine.wait(TENANT, started.orchestration_id)


async def _stored(harness: Harness, oid: str) -> bytes:
    assert harness.log is not None
    return b"".join(r.leaf for r in await harness.log.read_stream(TENANT, oid))


async def test_regression_an_agent_cannot_name_a_server_variable_as_its_key(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    """A tenant named the server's JWT secret as its key and pointed the provider at its
    own host; the engine sent the secret there as a bearer token."""
    engine = await harness.open(
        env={"MAIP_JWT_HS256_SECRET": SECRET, "KEY": "k"}, provider_policy=_loopback(fake_openai)
    )
    with pytest.raises(WorkflowValidationError) as refused:
        await engine.register_agent(
            TENANT, name="x", provider=_openai(fake_openai, api_key_env="MAIP_JWT_HS256_SECRET")
        )
    assert refused.value.field == "provider.api_key_env"
    assert fake_openai.headers == []


async def test_a_key_goes_only_to_the_hosts_it_is_allowed(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    policy = ProviderPolicy.of(
        allow_private_hosts=["127.0.0.1", "localhost"], keys={"KEY": ["https://api.example.com"]}
    )
    engine = await harness.open(env={"KEY": SECRET}, provider_policy=policy)
    with pytest.raises(WorkflowValidationError) as refused:
        await engine.register_agent(
            TENANT, name="x", provider=_openai(fake_openai, api_key_env="KEY")
        )
    assert refused.value.field == "provider.base_url"
    # Without the key, the same endpoint is fine.
    agent = await engine.register_agent(TENANT, name="x", provider=_openai(fake_openai))
    fake_openai.script = [completion("fine")]
    assert (await _run(engine, agent.agent_id)).status == "completed"
    assert "Authorization" not in fake_openai.headers[0]


async def test_an_allowed_key_is_sent_to_its_host(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    engine = await harness.open(env={"KEY": SECRET}, provider_policy=_loopback(fake_openai))
    agent = await engine.register_agent(
        TENANT, name="x", provider=_openai(fake_openai, api_key_env="KEY")
    )
    fake_openai.script = [completion("fine")]
    assert (await _run(engine, agent.agent_id)).status == "completed"
    assert fake_openai.headers[0]["Authorization"] == f"Bearer {SECRET}"


@pytest.mark.parametrize(
    "allowed",
    [
        "https://127.0.0.1:{port}",  # another scheme: the key would travel in clear
        "http://127.0.0.1:1",  # another port of the same host
        "127.0.0.1:{port}",  # no scheme means https
    ],
)
async def test_regression_a_key_is_bound_to_an_origin_not_a_host(
    harness: Harness, fake_openai: FakeOpenAI, allowed: str
) -> None:
    """Keys were bound to hosts: one allowed for https://api.openai.com went in clear to
    http://api.openai.com, or to any other port of an allowed host."""
    port = fake_openai.url.split(":")[2].split("/")[0]
    policy = ProviderPolicy.of(
        allow_private_hosts=["127.0.0.1"], keys={"KEY": [allowed.format(port=port)]}
    )
    engine = await harness.open(env={"KEY": SECRET}, provider_policy=policy)
    with pytest.raises(WorkflowValidationError, match="may not be sent to") as refused:
        await engine.register_agent(
            TENANT, name="x", provider=_openai(fake_openai, api_key_env="KEY")
        )
    assert refused.value.field == "provider.base_url"


def test_origins_are_normalised() -> None:
    policy = ProviderPolicy.of(
        keys={"K": ["API.example.com.", "http://h:80", "https://h:8443/ignored/path"]}
    )
    assert policy.keys["K"] == {
        "https://api.example.com:443",
        "http://h:80",
        "https://h:8443",
    }
    with pytest.raises(ValueError, match="not an origin"):
        ProviderPolicy.of(keys={"K": ["ftp://h"]})


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_private_addresses_need_the_operators_leave(
    harness: Harness, fake_openai: FakeOpenAI, host: str
) -> None:
    """A literal address is refused at registration; a name that resolves to loopback
    is refused where the session connects (the policy's resolver)."""
    engine = await harness.open(provider_policy=ProviderPolicy.of())
    url = fake_openai.url.replace("127.0.0.1", host)
    if host == "127.0.0.1":
        with pytest.raises(WorkflowValidationError) as refused:
            await engine.register_agent(
                TENANT, name="x", provider={"kind": "openai", "base_url": url}
            )
        assert refused.value.field == "provider.base_url"
        return
    agent = await engine.register_agent(
        TENANT, name="x", provider={"kind": "openai", "base_url": url}
    )
    state = await _run(engine, agent.agent_id)
    assert state.status == "failed"
    assert "non-public address" in str(state.steps[0].result)
    assert fake_openai.requests == []


async def test_the_policy_also_holds_for_agents_registered_before_it(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    engine = await harness.open(env={"KEY": SECRET})  # no policy: a trusting library
    agent = await engine.register_agent(
        TENANT, name="x", provider=_openai(fake_openai, api_key_env="KEY")
    )
    await harness.close()
    engine = await harness.open(
        env={"KEY": SECRET},
        provider_policy=ProviderPolicy.of(allow_private_hosts=["127.0.0.1"]),
    )
    state = await _run(engine, agent.agent_id)
    assert state.status == "failed"
    assert "not a provider key this server allows" in str(state.steps[0].result)
    assert fake_openai.headers == []


async def test_regression_a_url_that_can_never_work_is_refused_not_retried(
    engine: Engine,
) -> None:
    """``ftp://`` reached the provider and failed three times as a transient error."""
    with pytest.raises(WorkflowValidationError) as refused:
        await engine.register_agent(
            TENANT, name="x", provider={"kind": "openai", "base_url": "ftp://example.com/v1"}
        )
    assert refused.value.field == "provider.base_url"


async def test_regression_a_response_sent_in_parts_is_read_whole(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    """One ``read(n)`` returned what had arrived so far: half a JSON body."""
    engine = await harness.open()
    agent = await engine.register_agent(TENANT, name="x", provider=_openai(fake_openai))
    fake_openai.script = [("chunked", msgspec.json.encode(completion("y" * 3000)))]
    state = await _run(engine, agent.agent_id)
    assert state.status == "completed", state.steps
    assert state.results["content"] == "y" * 3000


async def test_regression_no_part_of_the_key_survives_in_an_error_snippet(
    harness: Harness, fake_openai: FakeOpenAI
) -> None:
    """The body was cut to 200 characters (now MAX_DETAIL_CHARS) before the key was
    scrubbed from it, so a key across the cut left its first part in the log."""
    engine = await harness.open(env={"KEY": SECRET})
    agent = await engine.register_agent(
        TENANT, name="x", provider=_openai(fake_openai, api_key_env="KEY")
    )
    fake_openai.script = [("status", 401, b"x" * (MAX_DETAIL_CHARS - 20) + SECRET.encode())]
    started = await engine.execute(TENANT, agent_id=agent.agent_id, input="hi")
    state = await engine.wait(TENANT, started.orchestration_id)
    assert state.status == "failed"
    stored = await _stored(harness, started.orchestration_id)
    assert b"HTTP 401" in stored
    assert SECRET[:10].encode() not in stored


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("100.100.100.200", False),  # shared space (RFC 6598): a cloud metadata service
        ("100.64.0.1", False),
        ("169.254.169.254", False),
        ("10.1.2.3", False),
        ("224.0.0.1", False),
        ("::ffff:127.0.0.1", False),
        ("2002:7f00:1::", False),  # 6to4 around 127.0.0.1
        ("2002:a01:203::", False),  # 6to4 around 10.1.2.3
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 around 169.254.169.254
        ("fd00::1", False),
        ("fec0::1", False),  # site-local (deprecated, RFC 3879): private in practice
    ],
)
def test_regression_public_means_globally_routable(address: str, public: bool) -> None:
    """100.64.0.0/10 and IPv4 inside 6to4 or NAT64 addresses passed as public."""
    assert is_public_address(address) is public
