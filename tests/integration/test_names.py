"""Tests for pacs.integration.names: Chinese and Latin person names → DICOM PN."""

from __future__ import annotations

import csv
import doctest
import time
from itertools import product
from pathlib import Path

import pytest
from pypinyin import Style, pinyin

from pacs.settings import SHIPPED_MAPPINGS
from pacs.integration import names
from pacs.integration.names import (
    NameRules,
    PersonName,
    check_name_tables,
    load_overrides,
    person_name,
)

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = SHIPPED_MAPPINGS
GOLDEN = ROOT / "tests" / "data" / "names"
PERSON_NAME_GOLDENS = (
    "golden_surnames.csv",
    "golden_common.csv",
    "golden_u_umlaut.csv",
    "golden_input_forms.csv",
)


def golden(filename: str) -> list[pytest.param]:
    """Rows of a golden CSV (``#`` lines are comments), one pytest param each, id file:line."""
    path = GOLDEN / filename
    lines = path.read_text(encoding="utf-8").split("\n")
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line and not line.startswith("#")]
    reader = csv.DictReader(line for _, line in numbered)
    rows = []
    for (number, _), row in zip(numbered[1:], reader):
        rows.append(pytest.param(row, id=f"{filename}:{number}:{row['family'] or row['given']}"))
    return rows


@pytest.fixture(scope="module")
def rules() -> dict[str, NameRules]:
    return {style: NameRules.load(MAPPINGS, u_umlaut=style) for style in ("yu", "v")}


@pytest.mark.parametrize(
    "row", [param for name in PERSON_NAME_GOLDENS for param in golden(name)]
)
def test_person_name_golden(row: dict[str, str], rules: dict[str, NameRules]) -> None:
    name = person_name(
        row["family"],
        row["given"],
        pinyin=row["pinyin"] or None,
        override=row["override"] or None,
        rules=rules[row["u_umlaut"] or "yu"],
    )
    assert (name.alphabetic, name.ideographic) == (row["alphabetic"], row["ideographic"])
    if row["ideographic"]:
        assert f"{name.family}^{name.given}".rstrip("^") == row["ideographic"]
    expected_pn = "=".join(g for g in (row["alphabetic"], row["ideographic"]) if g)
    if not row["alphabetic"] and row["ideographic"]:
        expected_pn = "=" + row["ideographic"]
    assert name.to_dicom(ascii_only=False) == expected_pn


@pytest.mark.parametrize("row", golden("golden_dicom.csv"))
def test_to_dicom_golden(row: dict[str, str], rules: dict[str, NameRules]) -> None:
    name = person_name(row["family"], row["given"], rules=rules[row["u_umlaut"] or "yu"])
    assert name.to_dicom(ascii_only=False) == row["dicom"]
    assert name.to_dicom(ascii_only=True) == row["dicom_ascii"]
    assert name.to_dicom(ascii_only=True).isascii()


def test_to_dicom_keeps_inner_empty_groups() -> None:
    name = PersonName("Yamada", "Tarou", "Yamada^Tarou", "", "ヤマダ^タロウ")
    assert name.to_dicom(ascii_only=False) == "Yamada^Tarou==ヤマダ^タロウ"
    assert name.to_dicom(ascii_only=True) == "Yamada^Tarou"
    assert PersonName("", "", "", "").to_dicom(ascii_only=False) == ""


def test_golden_files_cover_every_surname_in_the_brief() -> None:
    listed = set(
        "单曾解区仇朴查盖覃缪翟乐任华种召繁员宿折黑秘句阚沈曲纪过柏贾薄藏都费能牟朝尉"
    ) | {
        "尉迟", "万俟", "长孙", "澹台", "单于", "令狐", "欧阳", "司马", "诸葛", "上官", "皇甫",
        "慕容", "宇文", "司徒", "夏侯", "东方", "公孙", "端木", "公冶", "宗政", "濮阳", "淳于",
        "太叔", "申屠", "轩辕", "钟离", "闻人", "赫连", "呼延", "独孤", "南宫", "西门", "百里",
        "东郭", "司空", "司寇", "子车", "颛孙", "左丘", "公羊", "谷梁", "拓跋", "羊舌", "第五",
        "梁丘", "公西", "亓官", "巫马", "乐正", "壤驷", "公良", "漆雕",
    }
    covered = {p.values[0]["ideographic"].split("^")[0] for p in golden("golden_surnames.csv")}
    assert listed - covered == set()


# --- the shipped tables ---------------------------------------------------------------------


def test_shipped_tables_have_no_problems() -> None:
    assert check_name_tables(MAPPINGS) == []


def test_shipped_overrides_hold_no_patient() -> None:
    assert load_overrides(MAPPINGS) == {}


def test_every_shipped_surname_splits_and_reads_as_listed(rules: dict[str, NameRules]) -> None:
    table = rules["v"].surnames
    for surname, reading in table.items():
        name = person_name(surname + "明", rules=rules["v"])
        assert (name.family, name.given, name.alphabetic) == (surname, "明", reading + "^MING")


def test_every_shipped_reading_is_a_dictionary_reading(rules: dict[str, NameRules]) -> None:
    """Catches typos: each reading must combine readings pypinyin knows for the characters."""
    not_in_pypinyin = {"萬俟": "MOQI"}  # pypinyin has no MO for the traditional 萬
    for surname, reading in rules["v"].surnames.items():
        if not_in_pypinyin.get(surname) == reading:
            continue
        per_char = pinyin(surname, style=Style.NORMAL, heteronym=True, v_to_u=False)
        known = {"".join(combo).upper() for combo in product(*per_char)}
        assert reading in known, f"{surname}: {reading} not in {sorted(known)}"


def test_ü_style_applies_to_the_table(rules: dict[str, NameRules]) -> None:
    assert rules["yu"].family_pinyin("吕") == "LYU"
    assert rules["v"].family_pinyin("吕") == "LV"
    assert rules["yu"].family_pinyin("鲜于") == "XIANYU"  # N+YU across syllables stays as is
    assert rules["v"].family_pinyin("鲜于") == "XIANYU"


# --- rules and loaders ----------------------------------------------------------------------


def test_rules_accept_lyu_for_ü() -> None:
    rules = NameRules({"吕": "lyu", "闾丘": "LYUQIU", "女": "NYU"}, u_umlaut="v")
    assert dict(rules.surnames) == {"吕": "LV", "闾丘": "LVQIU", "女": "NV"}


def test_rules_reject_bad_entries() -> None:
    with pytest.raises(ValueError, match="u_umlaut"):
        NameRules({}, u_umlaut="u")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Han characters"):
        NameRules({"Li": "LI"})
    with pytest.raises(ValueError, match="Han characters"):
        NameRules({"单": "SHÀN"})


def test_split_whole_name_prefers_the_longest_compound() -> None:
    rules = NameRules({"爱新觉罗": "AIXINJUELUO", "欧阳": "OUYANG", "欧": "OU"})
    assert rules.split_whole_name("爱新觉罗溥仪") == ("爱新觉罗", "溥仪")
    assert rules.split_whole_name("欧阳修") == ("欧阳", "修")
    assert rules.split_whole_name("欧阳") == ("欧", "阳")
    assert rules.split_whole_name("张三") == ("张", "三")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_check_reports_each_problem_with_file_and_line(tmp_path: Path) -> None:
    surnames = write(
        tmp_path / "names" / "surnames.csv",
        "# comment\n"
        "surname,pinyin,comment\n"
        "单,SHAN,ok\n"
        "Li,LI,not Han\n"
        "曾,zeng,lower case\n"
        "欧阳,OU YANG,space\n"
        "徐,XV,V after X\n"
        "单,DAN,duplicate\n"
        "单于,SHANGG,not two syllables\n"
        "区\n"
        "\n"
        "# trailing comment\n",
    )
    problems = check_name_tables(tmp_path)
    assert [p.split(": ", 1)[0] for p in problems] == [
        f"{surnames}:4",
        f"{surnames}:5",
        f"{surnames}:6",
        f"{surnames}:7",
        f"{surnames}:8",
        f"{surnames}:9",
        f"{surnames}:10",
    ]
    assert "Chinese characters" in problems[0]
    assert "upper-case letters A-Z" in problems[1]
    assert "upper-case letters A-Z" in problems[2]
    assert "after J, Q, X, Y write U" in problems[3]
    assert "already listed on line 3" in problems[4]
    assert "Mandarin syllable" in problems[5]
    assert "found 1 column" in problems[6]


def test_check_reports_a_missing_header_and_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "names" / "surnames.csv"
    assert check_name_tables(tmp_path) == [f"{missing}:0: file not found"]
    path = write(tmp_path / "names" / "surnames.csv", "单,SHAN,no header\n曾,ZENG,\n")
    assert check_name_tables(tmp_path) == [
        f"{path}:1: the first row must be the header surname,pinyin,comment"
    ]


def test_check_reports_override_problems(tmp_path: Path) -> None:
    write(tmp_path / "names" / "surnames.csv", "surname,pinyin,comment\n")
    overrides = write(
        tmp_path / "names" / "overrides.csv",
        "patient_id,alphabetic,comment\n"
        "P1,SHAN^TIANFANG,ok\n"
        ",SHAN^TIANFANG,no id\n"
        "P2,单^田芳,Han\n"
        "P3,SHAN^TIANFANG=单^田芳,two groups\n"
        "P1,DAN^TIANFANG,duplicate\n"
        "P4,,empty\n",
    )
    problems = check_name_tables(tmp_path)
    assert [p.split(": ", 1)[0] for p in problems] == [f"{overrides}:{n}" for n in (3, 4, 5, 6, 7)]
    assert "already listed on line 2" in problems[3]


def test_load_skips_bad_rows_and_tolerates_excel(tmp_path: Path) -> None:
    write(
        tmp_path / "names" / "surnames.csv",
        "\ufeffsurname,pinyin,comment\r\n单,SHAN,a comment, with a comma\r\n曾,zeng\r\n查,ZHA\r\n",
    )
    rules = NameRules.load(tmp_path)
    assert dict(rules.surnames) == {"单": "SHAN", "查": "ZHA"}
    assert check_name_tables(tmp_path)[0].startswith(f"{tmp_path / 'names' / 'surnames.csv'}:3:")


def test_load_accepts_a_header_without_comment_and_blank_spreadsheet_rows(tmp_path: Path) -> None:
    write(tmp_path / "names" / "surnames.csv", "Surname,Pinyin\n单,SHAN\n,,\n欧阳,OUYANG\n")
    assert dict(NameRules.load(tmp_path).surnames) == {"单": "SHAN", "欧阳": "OUYANG"}
    assert check_name_tables(tmp_path) == []


def test_load_without_a_table_gives_first_character_surnames(tmp_path: Path) -> None:
    rules = NameRules.load(tmp_path)
    assert person_name("欧阳娜娜", rules=rules).alphabetic == "OU^YANGNANA"


def test_load_overrides(tmp_path: Path) -> None:
    assert load_overrides(tmp_path) == {}
    write(
        tmp_path / "names" / "overrides.csv",
        "patient_id,alphabetic,comment\n"
        "# 1,X^Y,example\n"
        "0001234567,SHAN^TIANFANG,ID card says SHAN, not DAN\n"
        "0007654321,单^田芳,skipped: Han characters\n",
    )
    overrides = load_overrides(tmp_path)
    assert overrides == {"0001234567": "SHAN^TIANFANG"}


def test_override_from_the_table_is_used(tmp_path: Path, rules: dict[str, NameRules]) -> None:
    write(tmp_path / "names" / "overrides.csv", "patient_id,alphabetic,comment\nP1,DAN^TIANFANG,\n")
    override = load_overrides(tmp_path).get("P1")
    name = person_name("单田芳", rules=rules["yu"], override=override)
    assert name.to_dicom(ascii_only=False) == "DAN^TIANFANG=单^田芳"


# --- robustness -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, given",
    [
        ("\x00", ""),
        ("^^^^^^^^", ""),
        ("====", "=="),
        ("·", ""),
        ("·张", ""),
        ("张·", ""),
        ("..", ""),
        ("😀", ""),
        ("やまだ", "たろう"),
        ("김", "민수"),
        ("𠀀", ""),
        ("张" * 200, ""),
        ("张\r\n三", ""),
        ("张", "三^四=五\\六"),
        ("Smith", "约翰"),
        ("A张三", ""),
        ("〇", "〇"),
    ],
)
def test_odd_input_does_not_raise(family: str, given: str, rules: dict[str, NameRules]) -> None:
    for style in ("yu", "v"):
        name = person_name(family, given, pinyin="??", override="", rules=rules[style])
        for group in (name.alphabetic, name.ideographic):
            assert "\\" not in group and "=" not in group
            assert group.count("^") < 5
        assert name.to_dicom(ascii_only=True).isascii()


def test_none_is_taken_as_empty(rules: dict[str, NameRules]) -> None:
    name = person_name(None, None, rules=rules["yu"])  # type: ignore[arg-type]
    assert name == PersonName("", "", "", "")


def test_module_examples() -> None:
    assert doctest.testmod(names).failed == 0


def test_a_warm_call_takes_well_under_a_fifth_of_a_millisecond(rules: dict[str, NameRules]) -> None:
    """The HL7 engine's budget is 1,000 messages/s; a name must cost a small part of 1 ms."""
    person_name("陈思琪", rules=rules["yu"])
    calls = 2000
    start = time.perf_counter()
    for _ in range(calls):
        person_name("陈思琪", rules=rules["yu"])
    assert (time.perf_counter() - start) / calls < 200e-6
