"""Content compliance check on known-bad and known-good texts."""

from __future__ import annotations

import pytest

from airflow_provider_hlml.analysis.content import check_content, luhn_valid


class TestCheckContent:
    def test_known_good(self) -> None:
        text = "Our churn model v3 improves recall by 4.2% on the 2025-05 cohort (n=12,400).\nSee the report."
        result = check_content(text)
        assert result.passed is True
        assert result.findings == []
        assert result.redacted_content == text

    @pytest.mark.parametrize(
        ("line", "policy", "kind"),
        [
            ('aws_access_key_id = "AKIAIOSFODNN7EXAMPLE"', "secrets", "AWS Access Key"),
            ("-----BEGIN RSA PRIVATE KEY-----", "secrets", "Private Key"),
            ('password = "correct-horse-battery"', "secrets", "Secret Keyword"),
            ("slack: xoxb-123456789012-1234567890123-abcdefghijklmnopqrstuvwx", "secrets", "Slack Token"),
            ("write to jane.doe@example.com", "pii", "email"),
            ("call +1 415-555-0134 today", "pii", "phone"),
            ("call (020) 7946 0958", "pii", "phone"),
            ("card 4111 1111 1111 1111 on file", "pii", "card_number"),
            ("card 5500-0000-0000-0004", "pii", "card_number"),
        ],
    )
    def test_known_bad(self, line: str, policy: str, kind: str) -> None:
        result = check_content(f"Hello\n{line}\n")
        assert result.passed is False
        assert (policy, kind, 2) in {(f.policy, f.kind, f.line) for f in result.findings}
        flagged = result.redacted_content.splitlines()[1]
        assert flagged != line
        assert "Hello" in result.redacted_content

    def test_findings_never_carry_the_value(self) -> None:
        result = check_content('token = "AKIAIOSFODNN7EXAMPLE" and mail bob@example.com')
        assert "AKIAIOSFODNN7EXAMPLE" not in str(result.to_dict(include_content=True))
        assert "bob@example.com" not in str(result.to_dict(include_content=True))

    def test_numbers_that_are_not_cards_or_phones(self) -> None:
        result = check_content("Order 1234567890123 shipped; 3.14159; version 2.10.1; year 2025")
        assert result.passed is True

    def test_policies_can_be_chosen(self) -> None:
        text = "mail jane@example.com\npassword = 'correct-horse-battery'"
        assert {f.policy for f in check_content(text, ["pii"]).findings} == {"pii"}
        assert {f.policy for f in check_content(text, ["secrets"]).findings} == {"secrets"}

    def test_unknown_policy(self) -> None:
        with pytest.raises(ValueError, match="unknown \\['hipaa'\\]"):
            check_content("x", ["hipaa"])

    def test_luhn(self) -> None:
        assert luhn_valid("4111111111111111")
        assert not luhn_valid("4111111111111112")
