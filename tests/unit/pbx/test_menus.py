"""Voice menus: names unique in a domain, greetings as speech or uploads, keys and timeout with targets of the
domain only, no timeout loops, deletion refused while something points at it, and the plan the B2BUA reads."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from tests.helpers import Tenant
from vpbx.app import Core
from vpbx.errors import NotFound, ValidationFailed
from vpbx.pbx import groups, lines, menus, routing
from vpbx.pbx.actions import ActionInput
from vpbx.pbx.ivr_plan import MenuAction, MenuPlans, build_menu_plan
from vpbx.pbx.menus import KeyInput, MenuInput
from vpbx.store.models import CallGroup, DomainPrompt, IncomingNumber, RoutingRule, User, VoiceMenu


def _fields(e: ValidationFailed) -> dict[str, list[str]]:
    return {k: [x.msgid for x in v] for k, v in e.by_field().items()}


def _key(key: str, action: str, **target: object) -> KeyInput:
    return KeyInput(key=key, target=ActionInput(action=action, **target))  # type: ignore[arg-type]


async def _add(core: Core, t: Tenant, name: str, prompt: str = "Hello", **more: object) -> VoiceMenu:
    async with core.sessions() as s:
        m = await menus.create_menu(s, t.id, MenuInput(name=name, prompt_text=prompt, **more))  # type: ignore[arg-type]
        await s.commit()
        return m


async def _admin(core: Core, t: Tenant) -> User:
    async with core.sessions() as s:
        u = await s.scalar(select(User).where(User.domain_id == t.id))
        assert u is not None
        return u


async def test_create_update_and_list(core: Core, t1: Tenant) -> None:
    m = await _add(core, t1, "  Main  ", "Press 1 for sales")
    assert (m.name, m.prompt_text, m.repeat_count, m.digit_timeout_s) == ("Main", "Press 1 for sales", 2, 5)
    await _add(core, t1, "After hours")
    async with core.sessions() as s:
        await menus.update_menu(s, t1.id, m.id, MenuInput(name="Main", prompt_text="Press 2"))
        await s.commit()
        assert [x.name for x in (await menus.list_menus(s, t1.id)).items] == ["After hours", "Main"]
        assert [x.name for x in (await menus.list_menus(s, t1.id, "press")).items] == ["Main"]
        assert (await menus.get_menu(s, t1.id, m.id)).prompt_text == "Press 2"


async def test_name_greeting_and_numbers_are_checked(core: Core, t1: Tenant, t2: Tenant) -> None:
    await _add(core, t1, "Main")
    await _add(core, t2, "Main")  # another domain may use the same name
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await menus.create_menu(s, t1.id, MenuInput(name="Main", prompt_text="x" * 1001))
        assert _fields(e.value) == {
            "name": ["A voice menu with this name already exists"],
            "prompt_text": ["At most {max} characters"],
        }
        with pytest.raises(ValidationFailed) as e:
            await menus.create_menu(s, t1.id, MenuInput(name=" ", prompt_text=""))
        assert _fields(e.value) == {"name": ["Required field"], "prompt_text": ["Required field"]}
        with pytest.raises(ValidationFailed) as e:
            await menus.create_menu(
                s,
                t1.id,
                MenuInput(
                    name="x" * 65,
                    greeting_source="upload",
                    greeting_voice="de",
                    repeat_count="0",
                    digit_timeout_s="soon",
                ),
            )
        assert _fields(e.value) == {
            "name": ["At most {max} characters"],
            "greeting_voice": ["Choose one of the options"],
            "greeting_file": ["Choose a WAV or MP3 file"],
            "repeat_count": ["Must be from {lo} to {hi}"],
            "digit_timeout_s": ["Must be a whole number"],
        }


async def test_bad_keys_and_foreign_targets(core: Core, t1: Tenant, t2: Tenant) -> None:
    theirs = await _add(core, t2, "Theirs")
    their_admin = await _admin(core, t2)
    async with core.sessions() as s:
        their_group = await groups.create_group(s, t2.id, groups.GroupInput(name="G", pin="500"))
        await s.commit()
    keys = [
        _key("1", "repeat"),
        _key("1", "hangup"),  # twice
        _key("A", "hangup"),  # not a key
        _key("2", "user", user_id=their_admin.id),
        _key("3", "group", group_id=their_group.id),
        _key("4", "menu", menu_id=theirs.id),
        _key("5", "menu", menu_id=uuid.uuid4()),
        _key("6", "external", number="not a number"),
        _key("7", "voicemail"),  # a box, but whose?
        _key("8", "reject"),  # not a key action
    ]
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await menus.create_menu(
                s,
                t1.id,
                MenuInput(
                    name="Main",
                    prompt_text="Hi",
                    keys=keys,
                    timeout=ActionInput(action="repeat"),  # not a timeout action
                ),
            )
    assert _fields(e.value) == {
        "keys.1.key": ["Key {key} is used twice"],
        "keys.2.key": ["A key is a digit, * or #"],
        "keys.3.user_id": ["Choose a user of this domain"],
        "keys.4.group_id": ["Choose a group of this domain"],
        "keys.5.menu_id": ["Choose a voice menu of this domain"],
        "keys.6.menu_id": ["Choose a voice menu of this domain"],
        "keys.7.number": ["Not a valid phone number: {value}"],
        "keys.8.user_id": ["Choose a user of this domain"],
        "keys.9.action": ["Choose one of the options"],
        "timeout_action": ["Choose one of the options"],
    }
    async with core.sessions() as s:
        assert (await menus.list_menus(s, t1.id)).total == 0
        with pytest.raises(ValidationFailed) as e:
            await menus.create_menu(
                s,
                t1.id,
                MenuInput(
                    name="Main", prompt_text="Hi", timeout=ActionInput(action="user", user_id=their_admin.id)
                ),
            )
        assert _fields(e.value) == {"timeout_user_id": ["Choose a user of this domain"]}


async def test_timeout_loops_are_refused_but_keys_may_go_back(core: Core, t1: Tenant) -> None:
    main = await _add(core, t1, "Main")
    sub = await _add(core, t1, "Sub", keys=[_key("0", "menu", menu_id=main.id)])
    async with core.sessions() as s:
        # Main's key 1 goes to Sub and Sub's key 0 back: the caller chooses, no loop
        await menus.update_menu(
            s,
            t1.id,
            main.id,
            MenuInput(name="Main", prompt_text="Hello", keys=[_key("1", "menu", menu_id=sub.id)]),
        )
        await s.commit()
    async with core.sessions() as s:
        # a timeout to itself would replay for ever
        with pytest.raises(ValidationFailed) as e:
            await menus.update_menu(
                s,
                t1.id,
                main.id,
                MenuInput(
                    name="Main", prompt_text="Hello", timeout=ActionInput(action="menu", menu_id=main.id)
                ),
            )
        assert _fields(e.value) == {"timeout_action": ["This timeout action makes a routing loop: {path}"]}
        assert e.value.errors[0].params["path"] == "Main → Main"
        await s.rollback()
    async with core.sessions() as s:
        await menus.update_menu(
            s,
            t1.id,
            sub.id,
            MenuInput(name="Sub", prompt_text="Hello", timeout=ActionInput(action="menu", menu_id=main.id)),
        )
        await s.commit()
    async with core.sessions() as s:
        # Main → Sub → Main with nobody pressing anything
        with pytest.raises(ValidationFailed) as e:
            await menus.update_menu(
                s,
                t1.id,
                main.id,
                MenuInput(
                    name="Main", prompt_text="Hello", timeout=ActionInput(action="menu", menu_id=sub.id)
                ),
            )
        assert e.value.errors[0].params["path"] == "Main → Sub → Main"
        await s.rollback()
    # a group falling through to Sub, whose timeout goes to the group: a loop through the group form too
    async with core.sessions() as s:
        g = await groups.create_group(
            s,
            t1.id,
            groups.GroupInput(
                name="Sales", pin="500", fallthrough=ActionInput(action="menu", menu_id=sub.id)
            ),
        )
        await s.commit()
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await menus.update_menu(
                s,
                t1.id,
                sub.id,
                MenuInput(
                    name="Sub", prompt_text="Hello", timeout=ActionInput(action="group", group_id=g.id)
                ),
            )
        assert e.value.errors[0].params["path"] == "500 → Sub → 500"
        await s.rollback()
    # a number's rule into a menu whose timeout forwards to that same number
    async with core.sessions() as s:
        n = await lines.create_number(s, t1.id, lines.NumberInput(number="+74951234567"))
        await routing.add_rule(
            s, t1.id, n.id, routing.RuleInput(target=ActionInput(action="menu", menu_id=main.id))
        )
        await s.commit()
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await menus.update_menu(
                s,
                t1.id,
                main.id,
                MenuInput(
                    name="Main",
                    prompt_text="Hello",
                    timeout=ActionInput(action="external", number="+74951234567"),
                ),
            )
        assert e.value.errors[0].params["path"] == "+74951234567 → Main → +74951234567"


async def test_other_domain_gets_not_found(core: Core, t1: Tenant, t2: Tenant) -> None:
    m = await _add(core, t1, "Main", "hello")
    async with core.sessions() as s:
        with pytest.raises(NotFound):
            await menus.get_menu(s, t2.id, m.id)
        with pytest.raises(NotFound):
            await menus.update_menu(s, t2.id, m.id, MenuInput(name="Stolen", prompt_text="x"))
        with pytest.raises(NotFound):
            await menus.delete_menu(s, t2.id, m.id)
        with pytest.raises(NotFound):
            await build_menu_plan(s, core.prompts, t2.id, m.id)
        assert (await menus.list_menus(s, t2.id)).total == 0
    async with core.sessions() as s:
        assert (await s.get(VoiceMenu, m.id)) is not None
        assert (await menus.get_menu(s, t1.id, m.id)).name == "Main"


async def test_delete_refused_while_a_rule_group_or_menu_uses_it(core: Core, t1: Tenant) -> None:
    m = await _add(core, t1, "Main")
    other = await _add(core, t1, "Other", keys=[_key("9", "menu", menu_id=m.id)])
    async with core.sessions() as s:
        n = IncomingNumber(domain_id=t1.id, number="+74951234567")
        s.add(n)
        await s.flush()
        rule = RoutingRule(domain_id=t1.id, number_id=n.id, position=0, action="menu", target_menu_id=m.id)
        group = CallGroup(
            domain_id=t1.id, name="G", pin="500", fallthrough_action="menu", fallthrough_menu_id=m.id
        )
        s.add_all([rule, group])
        await s.commit()
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await menus.delete_menu(s, t1.id, m.id)
        assert list(_fields(e.value)) == ["id"]
        await s.delete(await s.get(RoutingRule, rule.id))
        await s.commit()
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed):
            await menus.delete_menu(s, t1.id, m.id)  # the group still falls through to it
        g = await s.get(CallGroup, group.id)
        assert g is not None
        g.fallthrough_action, g.fallthrough_menu_id = None, None
        await s.commit()
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed):
            await menus.delete_menu(s, t1.id, m.id)  # Other's key 9 still leads to it
        await menus.delete_menu(s, t1.id, other.id)  # its own keys go with it
        await menus.delete_menu(s, t1.id, m.id)
        await s.commit()
    async with core.sessions() as s:
        assert list(await s.scalars(select(VoiceMenu))) == []


async def test_a_user_in_a_menu_key_cannot_be_deleted(core: Core, t1: Tenant) -> None:
    from vpbx.pbx import users

    async with core.sessions() as s:
        u = await users.create_user(
            s, t1.id, users.UserInput(name="anna", display_name="Anna", pin="101"), box=core.box
        )
        await s.commit()
    await _add(core, t1, "Main", keys=[_key("1", "user", user_id=u.id)])
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed):
            await users.delete_user(s, t1.id, u.id)


async def test_text_greeting_is_spoken_and_owned(core: Core, t1: Tenant, t2: Tenant) -> None:
    async with core.sessions() as s:
        m = await menus.create_menu(
            s,
            t1.id,
            MenuInput(name="Main", prompt_text="Press one", greeting_voice="en", invalid_text="Wrong key"),
            core.prompts,
        )
        await s.commit()
    assert m.greeting_prompt_id is not None and m.invalid_prompt_id is not None
    assert core.prompts.get(m.greeting_prompt_id).duration_s > 0.3
    async with core.sessions() as s:
        assert await menus.owns_prompt(s, t1.id, m.greeting_prompt_id)
        assert await menus.owns_prompt(s, t1.id, m.invalid_prompt_id)
        assert not await menus.owns_prompt(s, t2.id, m.greeting_prompt_id)
        rows = list(await s.scalars(select(DomainPrompt.source).where(DomainPrompt.domain_id == t1.id)))
        assert rows == ["tts", "tts"]


async def test_corrupt_upload_stores_nothing(core: Core, t1: Tenant) -> None:
    broken = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await menus.create_menu(
                s,
                t1.id,
                MenuInput(name="Main", greeting_source="upload", upload=broken, greeting_file_name="x.wav"),
                core.prompts,
            )
        assert _fields(e.value) == {"greeting_file": ["The file is damaged or not a real {format} file"]}
        await s.rollback()
    async with core.sessions() as s:
        assert list(await s.scalars(select(VoiceMenu))) == []
        assert list(await s.scalars(select(DomainPrompt))) == []
    assert not core.prompts.root.exists() or not any(core.prompts.root.glob("*.wav"))


async def test_menu_plan(core: Core, t1: Tenant) -> None:
    admin = await _admin(core, t1)
    async with core.sessions() as s:
        g = await groups.create_group(s, t1.id, groups.GroupInput(name="Sales", pin="500"))
        await s.commit()
    sub = await _add(core, t1, "Sub")  # seeded without a prompt store: spoken when the plan is built
    async with core.sessions() as s:
        m = await menus.create_menu(
            s,
            t1.id,
            MenuInput(
                name="Main",
                prompt_text="Нажмите один",
                repeat_count=3,
                digit_timeout_s=7,
                keys=[
                    _key("#", "hangup"),
                    _key("1", "user", user_id=admin.id),
                    _key("2", "group", group_id=g.id),
                    _key("3", "menu", menu_id=sub.id),
                    _key("4", "external", number="8 916 123-45-67"),
                    _key("5", "repeat"),
                    _key("0", "extension"),
                ],
                timeout=ActionInput(action="group", group_id=g.id),
            ),
            core.prompts,
        )
        await s.commit()
    plan = await MenuPlans(core.sessions, core.prompts).menu_plan(t1.id, m.id)
    assert (plan.menu_id, plan.name, plan.voice, plan.repeat_count, plan.digit_timeout_s) == (
        m.id,
        "Main",
        "ru",
        3,
        7,
    )
    assert plan.greeting_prompt_id == m.greeting_prompt_id
    assert core.prompts.get(plan.invalid_prompt_id).duration_s > 0.3  # the system phrase
    assert list(plan.keys) == ["1", "2", "3", "4", "5", "0", "#"]
    assert plan.keys["1"] == MenuAction(action="user", user_id=admin.id, pin="100")
    assert plan.keys["2"] == MenuAction(action="group", group_id=g.id)
    assert plan.keys["3"] == MenuAction(action="menu", menu_id=sub.id)
    assert plan.keys["4"] == MenuAction(action="external", number="+79161234567")
    assert plan.keys["5"] == MenuAction(action="repeat")
    assert plan.keys["0"] == MenuAction(action="extension")
    assert plan.action_for("#") == MenuAction(action="hangup")
    assert plan.action_for("9") is None
    assert plan.timeout == MenuAction(action="group", group_id=g.id)
    sub_plan = await MenuPlans(core.sessions, core.prompts).menu_plan(t1.id, sub.id)
    assert sub_plan.timeout == MenuAction(action="hangup") and dict(sub_plan.keys) == {}
    assert core.prompts.get(sub_plan.greeting_prompt_id).duration_s > 0.1
    with pytest.raises(TypeError):
        sub_plan.keys["1"] = MenuAction(action="hangup")  # type: ignore[index]
