"""``LocationStore.bindings``: one tenant's registrations, for the cabinet's device list."""

from __future__ import annotations

import uuid

from vpbx.pbx.registrar import Binding, MemoryLocationStore, aor_for
from vpbx.sip.flow import Destination
from vpbx.store.models import DomainId

A = DomainId(uuid.uuid4())
B = DomainId(uuid.uuid4())


def binding(contact: str, expires_at: float) -> Binding:
    return Binding(
        contact=contact,
        flow=Destination("udp", "192.0.2.1", 5060),
        call_id=contact,
        cseq=1,
        expires_at=expires_at,
        updated_at=0.0,
    )


async def test_bindings_of_one_tenant_by_aor() -> None:
    store = MemoryLocationStore()
    await store.save(A, aor_for("102", "a.test"), binding("sip:102@192.0.2.1:5060", 100))
    await store.save(A, aor_for("101", "a.test"), binding("sip:101@192.0.2.1:5060", 100))
    await store.save(A, aor_for("101", "a.test"), binding("sip:101@192.0.2.1:5062", 200))
    await store.save(B, aor_for("101", "b.test"), binding("sip:101@192.0.2.9:5060", 100))

    got = await store.bindings(A)
    assert [(aor, b.contact) for aor, b in got] == [
        ("sip:101@a.test", "sip:101@192.0.2.1:5060"),
        ("sip:101@a.test", "sip:101@192.0.2.1:5062"),
        ("sip:102@a.test", "sip:102@192.0.2.1:5060"),
    ]
    assert [b.contact for _, b in await store.bindings(B)] == ["sip:101@192.0.2.9:5060"]
    assert await store.bindings(DomainId(uuid.uuid4())) == []


async def test_bindings_follow_removal_and_expiry() -> None:
    store = MemoryLocationStore()
    await store.save(A, aor_for("101", "a.test"), binding("sip:101@192.0.2.1:5060", 100))
    await store.save(A, aor_for("102", "a.test"), binding("sip:102@192.0.2.1:5060", 300))
    await store.remove(A, aor_for("101", "a.test"))
    assert [aor for aor, _ in await store.bindings(A)] == ["sip:102@a.test"]
    await store.expire(now=300)
    assert await store.bindings(A) == []
    assert len(store) == 0


def test_an_empty_store_is_still_truthy() -> None:
    """``SipNode(location=store)`` keeps an empty ``store``, so the cabinet reads the node's bindings."""
    store = MemoryLocationStore()
    assert len(store) == 0 and bool(store)
    assert (store or MemoryLocationStore()) is store
