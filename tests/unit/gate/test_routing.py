"""The approval policy file: parsing, what it requires of a gate, and hostile files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from airflow_provider_hlml.gate.routing import PolicyFile, PolicyFileError, Requirement, load_policy_file
from airflow_provider_hlml.gate.state import ApprovalRule

POLICY = """
default:
  forbid: [requester]
types:
  model_promotion:
    forbid: [model_author]
    rules:
      - {name: ML lead, approvers: ["group:ml-leads"], required: 1}
      - {name: Product, approvers: ["group:product"], required: 1}
  code_execution:
    rules:
      - {name: Security, approvers: ["group:security-team", "sec@example.com"]}
urgency:
  critical:
    rules:
      - {name: Executive, approvers: ["group:executives"], required: 1}
"""


def write(tmp_path: Path, text: str | bytes, name: str = "policy.yaml") -> str:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


class TestRequirement:
    def test_sections_add_up_in_order_default_type_urgency(self, tmp_path: Path) -> None:
        policy = load_policy_file(write(tmp_path, POLICY))
        required = policy.requirement("model_promotion", "critical")
        assert [r.name for r in required.rules] == ["ML lead", "Product", "Executive"]
        assert {r.source for r in required.rules} == {"policy"}
        assert required.forbid == ("requester", "model_author")

    def test_a_type_without_a_section_gets_the_default_only(self, tmp_path: Path) -> None:
        policy = load_policy_file(write(tmp_path, POLICY))
        assert policy.requirement("custom", "medium") == Requirement(forbid=("requester",))
        security = policy.requirement("code_execution", "low").rules
        assert security == (
            ApprovalRule("Security", ("group:security-team", "sec@example.com"), 1, True, "policy"),
        )

    def test_an_empty_file_requires_nothing(self, tmp_path: Path) -> None:
        assert load_policy_file(write(tmp_path, "")).requirement("custom", "low") == Requirement()


class TestHostileFiles:
    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("- a\n- b\n", "a mapping with default, types, urgency and models"),
            ("typo: {}\n", "unknown keys ['typo']"),
            ("types: [model_promotion]\n", "types: a mapping of names"),
            ("types:\n  custom: {rules: [], approvers: [x]}\n", "types.custom: unknown keys ['approvers']"),
            ("types:\n  custom: {rules: [{name: X, required: 0}]}\n", "types.custom.rules[0].required"),
            ("types:\n  custom: {rules: [{name: X, required: true}]}\n", "required: an integer"),
            (
                "types:\n  custom: {rules: [{name: X, approvers: [a], required: 2}]}\n",
                "names only 1 approvers",
            ),
            ("types:\n  custom: {rules: {name: X}}\n", "rules: a list of rules"),
            ("default: {forbid: [everyone]}\n", "default.forbid: a list of requester, model_author"),
            ("default: {forbid: requester}\n", "default.forbid"),
            ("default: [1, 2]\n", "default: a mapping"),
            ("types:\n  custom: {rules: [{name: X, source: gate}]}\n", None),
            ("a: [unclosed\n", "is not readable YAML"),
            ("!!python/object/apply:os.system ['true']\n", "is not readable YAML"),
        ],
    )
    def test_what_is_not_a_policy_is_refused_naming_the_place(
        self, tmp_path: Path, text: str, message: str | None
    ) -> None:
        path = write(tmp_path, text)
        if message is None:
            # A file cannot make its rules pass for the gate's own: they are always "policy".
            (rule,) = load_policy_file(path).requirement("custom", "low").rules
            assert rule.source == "policy"
            return
        with pytest.raises(PolicyFileError) as raised:
            load_policy_file(path)
        assert message in str(raised.value)
        assert path in str(raised.value)

    def test_not_utf8_and_too_large_files_are_refused(self, tmp_path: Path) -> None:
        with pytest.raises(PolicyFileError, match="not readable YAML"):
            load_policy_file(write(tmp_path, b"default: {forbid: [\xff]}\n", "latin.yaml"))
        big = write(tmp_path, "# " + "x" * 1_000_001 + "\n", "big.yaml")
        with pytest.raises(PolicyFileError, match="larger than"):
            load_policy_file(big)

    def test_a_missing_file_never_reads_as_no_policy(self, tmp_path: Path) -> None:
        with pytest.raises(PolicyFileError, match="cannot be read"):
            load_policy_file(str(tmp_path / "missing.yaml"))

    def test_too_many_rules_for_one_gate(self, tmp_path: Path) -> None:
        rules = "".join(f"      - {{name: R{i}}}\n" for i in range(15))
        text = f"default:\n  rules:\n{rules}urgency:\n  high:\n    rules:\n{rules}"
        policy = load_policy_file(write(tmp_path, text))
        assert len(policy.requirement("custom", "low").rules) == 15
        with pytest.raises(PolicyFileError, match="more than 20 rules"):
            policy.requirement("custom", "high")


class TestReload:
    def test_an_edited_file_is_read_again(self, tmp_path: Path) -> None:
        path = write(tmp_path, "default: {forbid: [requester]}\n")
        assert load_policy_file(path).default.forbid == ("requester",)
        Path(path).write_text("default: {forbid: [requester, model_author]}\n")
        stat = os.stat(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        assert load_policy_file(path).default.forbid == ("requester", "model_author")

    def test_parse_accepts_none(self) -> None:
        assert PolicyFile.parse(None) == PolicyFile()
