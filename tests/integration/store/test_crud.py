"""Services and constraints behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from vpbx import store
from vpbx.crypto import SecretBox
from vpbx.errors import NotFound
from vpbx.pbx import domains, users
from vpbx.store.models import Domain, User, UserContactNumber

BOX = SecretBox("store-test-secret-key-0123456789-abcdefgh")


def _user(name: str, pin: str, **kw: object) -> users.UserInput:
    return users.UserInput(name=name, display_name=name.title(), pin=pin, **kw)  # type: ignore[arg-type]


async def test_crud_round_trip_through_services(engine: AsyncEngine) -> None:
    sessions = store.session_factory(engine)
    async with sessions() as s:
        d = await domains.create_domain(
            s, domains.DomainInput(name="Acme.VPBX.test", timezone="Asia/Yekaterinburg", channel_limit="25")
        )
        u = await users.create_user(
            s,
            d.id,
            users.UserInput(
                name="ivanov",
                display_name="Иванов Сергей",
                pin="102",
                email="ivanov@example.com",
                sip_password="Sip-Password-1",
                allow_international=True,
                contact_numbers=["+79161234567", "+74951234567"],
            ),
            box=BOX,
        )
        await s.commit()
        domain_id, user_id = d.id, u.id

    # A new session reads from the database, not from the identity map.
    async with sessions() as s:
        d = await domains.get_domain(s, domain_id)
        assert (d.name, d.timezone, d.channel_limit, d.status) == (
            "acme.vpbx.test",
            "Asia/Yekaterinburg",
            25,
            "active",
        )
        assert d.created_at.tzinfo is dt.UTC
        u = await users.get_user(s, domain_id, user_id)
        assert (u.name, u.display_name, u.pin, u.sip_login, u.email) == (
            "ivanov",
            "Иванов Сергей",
            "102",
            "ivanov",
            "ivanov@example.com",
        )
        assert u.allow_international is True and u.record_calls is False
        assert users.sip_password(u, BOX) == "Sip-Password-1"
        assert [c.number for c in u.contact_numbers] == ["+79161234567", "+74951234567"]
        found = await users.list_users(s, domain_id, q="ivan")
        assert [x.id for x in found.items] == [user_id] and found.total == 1

        await users.update_user(
            s,
            domain_id,
            user_id,
            users.UserInput(
                name="ivanov", display_name="Иванов С.", pin="105", contact_numbers=["+74951234567"]
            ),
            box=BOX,
        )
        await s.commit()

    async with sessions() as s:
        u = await users.get_user(s, domain_id, user_id)
        assert (u.display_name, u.pin) == ("Иванов С.", "105")
        assert users.sip_password(u, BOX) == "Sip-Password-1"  # empty password on update keeps it
        assert [c.number for c in u.contact_numbers] == ["+74951234567"]
        assert await s.scalar(select(func.count()).select_from(UserContactNumber)) == 1
        await users.delete_user(s, domain_id, user_id)
        await s.commit()

    async with sessions() as s:
        with pytest.raises(NotFound):
            await users.get_user(s, domain_id, user_id)
        assert (await users.list_users(s, domain_id)).total == 0
        assert await s.scalar(select(func.count()).select_from(UserContactNumber)) == 0


async def test_duplicate_domain_name_is_refused_by_the_database(engine: AsyncEngine) -> None:
    sessions = store.session_factory(engine)
    async with sessions() as s:
        s.add(Domain(name="acme.vpbx.test"))
        await s.commit()
    async with sessions() as s:
        s.add(Domain(name="acme.vpbx.test"))
        with pytest.raises(IntegrityError):
            await s.commit()
    async with sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Domain)) == 1


async def test_duplicate_extension_in_a_domain_is_refused_by_the_database(engine: AsyncEngine) -> None:
    sessions = store.session_factory(engine)
    async with sessions() as s:
        a = await domains.create_domain(s, domains.DomainInput(name="a.vpbx.test"))
        b = await domains.create_domain(s, domains.DomainInput(name="b.vpbx.test"))
        await users.create_user(s, a.id, _user("one", "101"), box=BOX)
        await users.create_user(s, b.id, _user("one", "101"), box=BOX)  # another domain: fine
        await s.commit()
        a_id = a.id
    async with sessions() as s:
        s.add(User(domain_id=a_id, name="two", display_name="Two", pin="101", sip_login="two",
                   sip_password_enc="x", ha1_md5="0" * 32, ha1_sha256="0" * 64))  # fmt: skip
        with pytest.raises(IntegrityError):
            await s.commit()


async def test_user_of_a_missing_domain_is_refused_by_the_database(engine: AsyncEngine) -> None:
    async with store.session_factory(engine)() as s:
        s.add(User(domain_id=uuid.uuid4(), name="ghost", display_name="Ghost", pin="101", sip_login="ghost",
                   sip_password_enc="x", ha1_md5="0" * 32, ha1_sha256="0" * 64))  # fmt: skip
        with pytest.raises(IntegrityError):
            await s.commit()


async def test_deleting_a_domain_cascades_to_its_users(engine: AsyncEngine) -> None:
    sessions = store.session_factory(engine)
    async with sessions() as s:
        gone = await domains.create_domain(s, domains.DomainInput(name="gone.vpbx.test"))
        kept = await domains.create_domain(s, domains.DomainInput(name="kept.vpbx.test"))
        for d in (gone, kept):
            await users.create_user(s, d.id, _user("one", "101", contact_numbers=["+79161234567"]), box=BOX)
            await users.create_user(s, d.id, _user("two", "102"), box=BOX)
        await s.commit()
        gone_id, kept_id = gone.id, kept.id
    async with sessions() as s:
        # A bulk delete bypasses the ORM's cascades: only the database's ON DELETE CASCADE acts here.
        await s.execute(delete(Domain).where(Domain.id == gone_id))
        await s.commit()
    async with sessions() as s:
        left = (await s.execute(select(User.domain_id, User.name).order_by(User.name))).all()
        assert [tuple(r) for r in left] == [(kept_id, "one"), (kept_id, "two")]
        assert await s.scalar(select(func.count()).select_from(UserContactNumber)) == 1
