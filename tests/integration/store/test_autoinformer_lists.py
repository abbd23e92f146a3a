"""Autoinformer contact lists, stop list and numbering table on SQLite and PostgreSQL (autoinformer.md §3.2,
§3.3, §12): the valid rows are imported with their time zones, every bad one is reported with its reason, and
one domain's lists and stop list never touch another's."""

from __future__ import annotations

import csv
import io
import uuid

import openpyxl
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from vpbx import store
from vpbx.autoinformer import contacts, stoplist, tz
from vpbx.autoinformer.schemas import CampaignSpec
from vpbx.autoinformer.tables import TableError
from vpbx.errors import NotFound
from vpbx.pbx import domains
from vpbx.store.models import AiCampaign, AiContact, AiContactPhone, AiStopEntry, AuditEntry, NumberingRange

MESSAGE = "{name}, ваша задолженность составляет {sum:money}."


def spec(text: str = MESSAGE, **kw: object) -> CampaignSpec:
    return CampaignSpec.model_validate(
        {
            "name": "Напоминание",
            "caller_id": "74951234567",
            "message": {"segments": [{"type": "tts", "text": text}]},
            "schedule": {"start_at": "2025-06-16 09:00:00"},
            **kw,
        }
    )


async def new_campaign(s: AsyncSession, domain_id: uuid.UUID, sp: CampaignSpec | None = None) -> uuid.UUID:
    sp = sp or spec()
    c = AiCampaign(domain_id=domain_id, name=sp.name, caller_id=sp.caller_id, settings=sp.settings_json())
    s.add(c)
    await s.flush()
    return c.id


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return store.session_factory(engine)


async def two_domains(sessions: async_sessionmaker[AsyncSession]) -> tuple[uuid.UUID, uuid.UUID]:
    async with sessions() as s:
        a = await domains.create_domain(s, domains.DomainInput(name="a.vpbx.test"))
        b = await domains.create_domain(s, domains.DomainInput(name="b.vpbx.test"))
        await s.commit()
        return a.id, b.id


async def test_api_list_of_section_12(sessions: async_sessionmaker[AsyncSession]) -> None:
    a, _ = await two_domains(sessions)
    async with sessions() as s:
        cid = await new_campaign(s, a, spec("{name}, долг {sum:money}"))
        await stoplist.add(s, a, "+7 916 000-00-09", author="admin")
        result = await contacts.add_numbers(
            s,
            a,
            cid,
            [
                {"phone": "8 (916) 123-45-67", "vars": {"name": "Иван", "sum": "100"}},
                {"phone": "+7 916 123-45-67", "vars": {"name": "Иван", "sum": "100"}},
                {"phone": "12345", "vars": {"name": "Иван", "sum": "100"}},
                {"phone": "79160000009", "vars": {"name": "Пётр", "sum": "5"}},
                {"phone": "79161112233", "vars": {"name": "Анна"}},
            ],
        )
        await s.commit()
    assert result.accepted == 1
    assert result.api_rejected() == [
        {"row": 2, "phone": "+7 916 123-45-67", "reason": "duplicate"},
        {"row": 3, "phone": "12345", "reason": "invalid_format"},
        {"row": 4, "phone": "79160000009", "reason": "stop_list"},
        {"row": 5, "phone": "79161112233", "reason": "missing_variable"},
    ]
    async with sessions() as s:
        (c,) = (await s.scalars(select(AiContact).where(AiContact.campaign_id == cid))).all()
        assert (c.phones, c.status, c.variables, c.row_no) == (
            ["79161234567"],
            "pending",
            {"name": "Иван", "sum": "100"},
            1,
        )
        # a retry of the same call adds nothing: every phone is now a duplicate
        again = await contacts.add_numbers(
            s, a, cid, [{"phone": "89161234567", "vars": {"name": "x", "sum": "1"}}]
        )
        assert again.accepted == 0 and again.counts["duplicate"] == 1


def bad_rows_csv() -> bytes:
    rows = [
        "Телефон;Телефон2;Name;Sum;external_id",
        "8 (916) 123-45-67;;Иван;100;c-1",
        "абвгд;;Буквы;1;c-2",  # letters
        "12345;;=2+2;1;c-3",  # a short number (and a formula for a name)
        "+7 916 123-45-67;;Дубль;1;c-4",  # the first row's number
        "",  # an empty line
        "79161234568;12345;Пётр;2;c-5",  # a good number and a bad one: imported, the bad one reported
        "+44 20 7123 4567;;Джон;3;c-6",  # international, not allowed
        "78091234567;;Платный;3;c-7",  # premium rate
        "77011234567;;Казахстан;3;c-8",  # +7, but Kazakhstan
        "79161234569;;;4;c-9",  # no name
        '"79161234570";"79161234568";"Анна; Мария";"1 000,50";c-10',  # phone2 repeats row 6's phone
    ]
    return ("\r\n".join(rows) + "\r\n").encode("cp1251")


async def test_csv_with_bad_rows_imports_the_good_ones_and_lists_every_bad_one(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    a, _ = await two_domains(sessions)
    async with sessions() as s:
        cid = await new_campaign(s, a)
        result = await contacts.import_file(s, a, cid, bad_rows_csv())
        await s.commit()
    assert result.accepted == 3
    assert [(r.row, r.column, r.reason) for r in result.rejected] == [
        (2, "Телефон", "invalid_format"),
        (3, "Телефон", "invalid_format"),
        (4, "Телефон", "duplicate"),
        (5, "Телефон", "empty_phone"),
        (6, "Телефон2", "invalid_format"),
        (7, "Телефон", "destination_restricted"),
        (8, "Телефон", "destination_restricted"),
        (9, "Телефон", "destination_restricted"),
        (10, "name", "missing_variable"),
        (11, "Телефон2", "duplicate"),
    ]
    assert result.rejected_rows == 8
    assert result.counts == {
        "empty_phone": 1,
        "invalid_format": 3,
        "duplicate": 2,
        "stop_list": 0,
        "destination_restricted": 3,
        "missing_variable": 1,
        "row_limit": 0,
    }
    report = list(csv.reader(io.StringIO(result.rejected_csv().decode("utf-8-sig")), delimiter=";"))
    assert report[0] == ["Телефон", "Телефон2", "Name", "Sum", "external_id", "reason"]
    assert [r[-1] for r in report[1:]] == [
        "invalid_format",
        "invalid_format",
        "duplicate",
        "empty_phone",
        "destination_restricted",
        "destination_restricted",
        "destination_restricted",
        "missing_variable",
    ]
    assert report[1][:5] == ["абвгд", "", "Буквы", "1", "c-2"]
    assert report[2][2] == "'=2+2"  # shown as text by spreadsheets, never run
    assert report[3][0] == "+7 916 123-45-67"  # a phone number stays as it is
    async with sessions() as s:
        rows = (
            await s.scalars(select(AiContact).where(AiContact.campaign_id == cid).order_by(AiContact.row_no))
        ).all()
        assert [(c.row_no, c.phones, c.external_id) for c in rows] == [
            (1, ["79161234567"], "c-1"),
            (6, ["79161234568"], "c-5"),
            (11, ["79161234570"], "c-10"),
        ]
        assert rows[2].variables == {"name": "Анна; Мария", "sum": "1 000,50"}
        phones = set(await s.scalars(select(AiContactPhone.phone).where(AiContactPhone.campaign_id == cid)))
        assert phones == {"79161234567", "79161234568", "79161234570"}


async def test_international_numbers_when_the_campaign_allows_them(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    a, _ = await two_domains(sessions)
    async with sessions() as s:
        cid = await new_campaign(s, a, spec("Привет", allow_international=True))
        r = await contacts.import_manual(s, a, cid, "+44 20 7123 4567\n77011234567\n78091234567\n")
    assert r.accepted == 2 and [x.reason for x in r.rejected] == ["destination_restricted"]


async def test_xlsx_import_with_a_number_cell(sessions: async_sessionmaker[AsyncSession]) -> None:
    a, _ = await two_domains(sessions)
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["phone", "name", "sum"])
    ws.append([79161234567, "Иван", 1234.5])
    ws.append(["8 916 123 45 68", "Анна", 10])
    ws.append(["not a phone", "Х", 1])
    buf = io.BytesIO()
    wb.save(buf)
    async with sessions() as s:
        cid = await new_campaign(s, a)
        r = await contacts.import_file(s, a, cid, buf.getvalue())
        await s.commit()
        got = (
            await s.scalars(select(AiContact).where(AiContact.campaign_id == cid).order_by(AiContact.row_no))
        ).all()
    assert r.accepted == 2 and [(x.row, x.reason) for x in r.rejected] == [(3, "invalid_format")]
    assert [c.phones for c in got] == [["79161234567"], ["79161234568"]]
    assert got[0].variables == {"name": "Иван", "sum": "1234.5"}


async def test_an_unreadable_file_adds_nothing(sessions: async_sessionmaker[AsyncSession]) -> None:
    a, _ = await two_domains(sessions)
    async with sessions() as s:
        cid = await new_campaign(s, a)
        with pytest.raises(TableError) as e:
            await contacts.import_file(s, a, cid, b'phone;name;sum\n79161234567;a;1\n79161234568;"b"x;1\n')
        assert (e.value.row, e.value.column) == (3, 2)
        assert await s.scalar(select(func.count()).select_from(AiContact)) == 0


async def test_row_limit(sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(contacts, "MAX_CONTACTS", 2)
    a, _ = await two_domains(sessions)
    async with sessions() as s:
        cid = await new_campaign(s, a, spec("Привет"))
        r1 = await contacts.import_manual(s, a, cid, "79161234561\n")
        r2 = await contacts.import_manual(s, a, cid, "79161234562\n79161234563\n12\n")
    assert r1.accepted == 1 and r2.accepted == 1
    assert [(x.row, x.reason) for x in r2.rejected] == [(2, "row_limit"), (3, "invalid_format")]


async def test_phones_of_one_person_and_the_recipient_time_zone(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    a, _ = await two_domains(sessions)
    async with sessions() as s:
        s.add(
            NumberingRange(
                first="79130000000",
                last="79139999999",
                region="Новосибирская обл.",
                timezone="Asia/Novosibirsk",
            )
        )
        cid = await new_campaign(s, a, spec("Привет"))
        r = await contacts.import_file(
            s,
            a,
            cid,
            b"phone,phone2,phone3\n79131234567,84951234567,79131234567\n74232123456,,\n79991234567,,\n+14155552671,,\n",
        )
        await s.commit()
        got = (
            await s.scalars(select(AiContact).where(AiContact.campaign_id == cid).order_by(AiContact.row_no))
        ).all()
    assert [x.reason for x in r.rejected] == ["duplicate", "destination_restricted"]
    assert [(c.phones, c.timezone) for c in got] == [
        (["79131234567", "74951234567"], "Asia/Novosibirsk"),  # from the numbering table
        (["74232123456"], "Asia/Vladivostok"),  # a geographic code: phonenumbers knows it
        (["79991234567"], None),  # a mobile code outside the table: the domain's zone
    ]


async def test_only_pending_contacts_are_removed(sessions: async_sessionmaker[AsyncSession]) -> None:
    a, b = await two_domains(sessions)
    async with sessions() as s:
        cid = await new_campaign(s, a, spec("Привет"))
        r = await contacts.import_manual(s, a, cid, "79161234561\n79161234562\n")
        first, second = r.contact_ids
        c2 = await s.get(AiContact, second)
        assert c2 is not None
        c2.status = "in_progress"
        await s.commit()
        with pytest.raises(NotFound):
            await contacts.remove_contacts(s, b, cid, [first])  # another domain's campaign
        assert await contacts.remove_contacts(s, a, cid, [first, second]) == 1
        await s.commit()
        left = set(await s.scalars(select(AiContactPhone.phone).where(AiContactPhone.campaign_id == cid)))
        assert left == {"79161234562"}
        again = await contacts.import_manual(s, a, cid, "79161234561\n")  # removed: no longer a duplicate
        assert again.accepted == 1


async def test_stop_list_is_per_domain(sessions: async_sessionmaker[AsyncSession]) -> None:
    a, b = await two_domains(sessions)
    async with sessions() as s:
        ca, cb = await new_campaign(s, a, spec("Привет")), await new_campaign(s, b, spec("Привет"))
        await stoplist.add(s, a, "8 (916) 123-45-67", author="admin@a")
        await stoplist.add_many(s, a, ["79161234568", "79161234569"], source="opt_out", campaign_id=ca)
        with pytest.raises(NotFound):  # the opt-out of another domain's campaign
            await stoplist.add_many(s, b, ["79161234560"], source="opt_out", campaign_id=ca)
        await s.commit()
        assert await stoplist.is_stopped(s, a, ["79161234567", "79161234568", "79160000000"]) == {
            "79161234567",
            "79161234568",
        }
        assert await stoplist.is_stopped(s, b, ["79161234567", "79161234568"]) == set()
        ra = await contacts.import_manual(s, a, ca, "79161234567\n79161234570\n")
        rb = await contacts.import_manual(s, b, cb, "79161234567\n79161234570\n")
        assert [x.reason for x in ra.rejected] == ["stop_list"] and ra.accepted == 1
        assert rb.rejected == [] and rb.accepted == 2
        page = await stoplist.list_entries(s, a, query="+7 916 123-45-6")
        assert page.total == 3 and {e.phone for e in page.entries} == {
            "79161234567",
            "79161234568",
            "79161234569",
        }
        assert (await stoplist.list_entries(s, a, source="opt_out", limit=1)).total == 2
        assert len((await stoplist.list_entries(s, a, source="opt_out", limit=1)).entries) == 1
        assert (await stoplist.list_entries(s, b)).total == 0
        assert (await stoplist.list_entries(s, a, query="89161234567")).total == 1


async def test_removing_an_opt_out_needs_confirmation_and_is_audited(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    a, b = await two_domains(sessions)
    async with sessions() as s:
        ca = await new_campaign(s, a, spec("Привет"))
        await stoplist.add_many(s, a, ["79161234568"], source="opt_out", campaign_id=ca)
        await stoplist.add(s, a, "79161234567")
        await s.commit()
        with pytest.raises(NotFound):
            await stoplist.remove(s, b, "79161234568", confirm=True)  # another domain's entry
        with pytest.raises(stoplist.OptOutConfirmationRequired):
            await stoplist.remove(s, a, "+7 916 123-45-68")
        await stoplist.remove(s, a, "79161234567")  # a manual entry: no confirmation, no audit
        await stoplist.remove(s, a, "+7 916 123-45-68", confirm=True, actor="user:admin")
        await s.commit()
        assert await s.scalar(select(func.count()).select_from(AiStopEntry)) == 0
        (audit,) = (await s.scalars(select(AuditEntry))).all()
        assert (audit.domain_id, audit.actor, audit.action, audit.object_id) == (
            a,
            "user:admin",
            "autoinformer.stop_list.remove_opt_out",
            "79161234568",
        )
        assert audit.details["campaign_id"] == ca.hex


async def test_stop_list_csv_import_and_export(sessions: async_sessionmaker[AsyncSession]) -> None:
    a, b = await two_domains(sessions)
    async with sessions() as s:
        await stoplist.add(s, a, "79161234567")
        data = (
            "Номер;Комментарий\n8 (916) 123-45-67;уже есть\n+7 916 123-45-68;новый\nabc;буквы\n"
            "79161234568;ещё раз\n\n89161234569;\n"
        )
        r = await stoplist.import_csv(s, a, data.encode("cp1251"), author="admin")
        await s.commit()
        assert r.added == 2
        assert [(x.row, x.reason) for x in r.rejected] == [
            (1, "duplicate"),
            (3, "invalid_format"),
            (4, "duplicate"),
            (5, "empty_phone"),
        ]
        exported = (await stoplist.export_csv(s, a)).decode("utf-8-sig")
        rows = list(csv.reader(io.StringIO(exported), delimiter=";"))
        assert rows[0] == ["phone", "source", "campaign_id", "author", "created_at"]
        assert [(r[0], r[1]) for r in rows[1:]] == [
            ("79161234567", "manual"),
            ("79161234568", "import"),
            ("79161234569", "import"),
        ]
        assert (await stoplist.export_csv(s, b)).decode("utf-8-sig").count("\n") == 1  # the header only
        # a header-less one-column file works too
        r2 = await stoplist.import_csv(s, b, b"79161234567\n79161234560\n")
        assert r2.added == 2


NUMBERING_CSV = (
    "АВС/ DEF;От;До;Емкость;Оператор;Регион;ИНН\r\n"
    '913;0000000;9999999;10000000;ПАО "МегаФон";Новосибирская обл.;7812014560\r\n'
    '914;2000000;2999999;1000000;ПАО "МТС";Республика Саха /Якутия/;7740000076\r\n'
    '999;1230000;1239999;10000;ООО "Тест";г. Москва и Московская область;1\r\n'
    '924;0000000;0999999;1000000;ПАО "МТС";Приморский край;7740000076\r\n'
    '958;5000000;5009999;10000;ООО "Тест";Неведомая земля;1\r\n'
)


async def test_numbering_table_loads_the_regulators_file_and_gives_zones(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as s:
        result = await tz.load_numbering(s, NUMBERING_CSV.encode("cp1251"))
        await s.commit()
        assert result.ranges == 5 and result.unmatched_regions == {"Неведомая земля": 1}
        assert await tz.recipient_zone(s, "79131234567") == "Asia/Novosibirsk"
        assert await tz.recipient_zone(s, "79142500000") == "Asia/Yakutsk"
        assert await tz.recipient_zone(s, "79141999999") is None  # just outside the range: a mobile code
        assert await tz.recipient_zone(s, "79991235000") == "Europe/Moscow"
        assert await tz.recipient_zone(s, "79240000001") == "Asia/Vladivostok"
        assert await tz.recipient_zone(s, "79585000001") is None  # a range without a zone
        assert await tz.recipient_zone(s, "73832123456") == "Asia/Novosibirsk"  # ABC: phonenumbers
        assert await tz.recipient_zone(s, "442071234567") == "Europe/London"
        assert await tz.recipient_zone(s, "14155552671") == "America/Los_Angeles"
        # one lookup for a whole list remembers ranges and the gaps between them
        lookup = tz.ZoneLookup(s)
        for number, zone in [
            ("79141999999", None),
            ("79142500000", "Asia/Yakutsk"),
            ("79141000000", None),  # the same gap, from memory
            ("79130000000", "Asia/Novosibirsk"),
            ("79150000000", None),
            ("79239999999", None),
            ("79240000001", "Asia/Vladivostok"),
            ("79999999999", None),
            ("79991235000", "Europe/Moscow"),
            ("79991239999", "Europe/Moscow"),
            ("79991240000", None),
            ("73832123456", "Asia/Novosibirsk"),
        ]:
            assert await lookup.zone(number) == zone, number
        # loading a newer file of the same codes replaces their ranges, UTF-8 works as well
        newer = "АВС/ DEF;От;До;Емкость;Оператор;Регион\n913;0000000;4999999;5000000;X;Томская обл.\n"
        await tz.load_numbering(s, newer.encode())
        await s.commit()
        assert await tz.recipient_zone(s, "79131234567") == "Asia/Tomsk"
        assert await tz.recipient_zone(s, "79136000000") is None
        assert await s.scalar(select(func.count()).select_from(NumberingRange)) == 5
