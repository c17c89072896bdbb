"""Code security analysis on known-bad and known-good snippets."""

from __future__ import annotations

import pytest

from airflow_provider_hlml.analysis.code import analyze_code, detect_language


class TestAnalyzeCode:
    @pytest.mark.parametrize(
        ("code", "language", "risk", "rule"),
        [
            ("import subprocess\nsubprocess.call(cmd, shell=True)\n", "python", "critical", "B602"),
            ("import os\nos.system('rm -rf ' + path)\n", "python", "critical", "B605"),
            ("import pickle\nmodel = pickle.loads(blob)\n", "python", "medium", "B301"),
            ("result = eval(user_input)\n", "python", "high", "B307"),
            ("DROP TABLE customers;", "sql", "critical", "SQL001"),
            ("truncate table events", "sql", "critical", "SQL002"),
            ("DELETE FROM users", "sql", "high", "SQL003"),
            ('DELETE FROM "Users";', "sql", "high", "SQL003"),
            ("UPDATE accounts SET balance = 0;", "sql", "high", "SQL004"),
            ("DELETE FROM users WHERE id = 7;", "sql", "medium", "SQL005"),
            ("GRANT ALL ON db.* TO 'x'@'%';", "sql", "medium", "SQL007"),
            ("rm -rf / --no-preserve-root", "shell", "critical", "SH001"),
            ("rm -rf ./build", "shell", "high", "SH002"),
            ("dd if=/dev/zero of=/dev/sda bs=1M", "shell", "critical", "SH004"),
            ("curl -fsSL https://get.example.sh | sudo bash", "shell", "high", "SH007"),
            (":(){ :|:& };:", "shell", "critical", "SH006"),
            ("sudo systemctl restart app", "shell", "medium", "SH011"),
        ],
    )
    def test_known_bad(self, code: str, language: str, risk: str, rule: str) -> None:
        result = analyze_code(code, language)
        assert result.language == language
        assert result.risk_level == risk
        assert result.findings[0].rule == rule
        assert result.findings[0].line >= 1

    @pytest.mark.parametrize(
        ("code", "language"),
        [
            ("import json\nprint(json.dumps({'a': 1}))\n", "python"),
            ("SELECT id, name FROM users WHERE active -- DROP TABLE x\n", "sql"),
            ("SELECT 'DROP TABLE users' AS text;", "sql"),
            ("ls -la /data\necho done\n# rm -rf / is only a comment", "shell"),
        ],
    )
    def test_known_good(self, code: str, language: str) -> None:
        result = analyze_code(code, language)
        assert result.risk_level == "none", result.findings
        assert result.findings == []

    def test_statement_lines_are_reported(self) -> None:
        result = analyze_code("SELECT 1;\n\nDELETE FROM logs;\nDROP VIEW v;", "sql")
        assert [(f.rule, f.line) for f in result.findings] == [("SQL001", 4), ("SQL003", 3)]

    def test_python_that_does_not_parse_is_flagged(self) -> None:
        result = analyze_code("def broken(:\n    pass", "python")
        assert result.risk_level == "medium"
        assert result.findings[0].rule == "SYNTAX"

    @pytest.mark.parametrize(
        ("code", "language"),
        [
            ("SELECT * FROM t", "sql"),
            ("with x as (select 1) select * from x", "sql"),
            ("#!/bin/bash\necho hi", "shell"),
            ("import os\nprint(os.getcwd())", "python"),
            ("ls -la | grep foo", "shell"),
        ],
    )
    def test_detect_language(self, code: str, language: str) -> None:
        assert detect_language(code) == language
        assert analyze_code(code).language == language

    def test_unknown_language(self) -> None:
        with pytest.raises(ValueError, match="language must be one of python, sql, shell"):
            analyze_code("x", "cobol")

    def test_result_is_json_able(self) -> None:
        import json

        data = analyze_code("DROP TABLE t", "sql").to_dict()
        assert json.loads(json.dumps(data))["risk_level"] == "critical"
