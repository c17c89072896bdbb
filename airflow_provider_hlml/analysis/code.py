"""Static security analysis of a code snippet before a person approves running it.

Python goes through bandit; SQL and shell through a small rule set for destructive statements.
The result carries a risk level (``none`` < ``low`` < ``medium`` < ``high`` < ``critical``).
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Language = Literal["python", "sql", "shell"]
RiskLevel = Literal["none", "low", "medium", "high", "critical"]
RISK_ORDER: tuple[RiskLevel, ...] = ("none", "low", "medium", "high", "critical")
LANGUAGES: tuple[Language, ...] = ("python", "sql", "shell")


@dataclass(frozen=True)
class Finding:
    """
    One problem found in a snippet.

    :param rule: rule id (bandit test id such as ``B602``, or ``SQL001`` / ``SH001``).
    :param severity: ``low``, ``medium``, ``high`` or ``critical``.
    :param message: what was found.
    :param line: 1-based line number.
    """

    rule: str
    severity: RiskLevel
    message: str
    line: int


@dataclass(frozen=True)
class CodeAnalysis:
    """
    The outcome of :func:`analyze_code`.

    :param language: the language analysed.
    :param risk_level: the highest severity found (``none`` when nothing was).
    :param findings: every finding, most severe first.
    :param tool: ``bandit`` or ``hlml-rules``.
    """

    language: Language
    risk_level: RiskLevel
    findings: list[Finding] = field(default_factory=list)
    tool: str = "hlml-rules"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, as put in an approval request's context."""
        return asdict(self)


def code_digest(code: str) -> str:
    """SHA-256 of code without its surrounding whitespace: the identity an approval of that code names.

    A code-execution gate sends it next to the code it shows the reviewer, and whatever runs the
    code afterwards recomputes it from the approved code (never trusting the sent value alone).
    Templated fields lose their trailing newline when rendered, so whitespace at the ends does
    not count.
    """
    return hashlib.sha256(code.strip().encode("utf-8")).hexdigest()


def max_risk(levels: list[RiskLevel]) -> RiskLevel:
    return max(levels, key=RISK_ORDER.index, default="none")


def _analysis(language: Language, findings: list[Finding], tool: str) -> CodeAnalysis:
    ordered = sorted(findings, key=lambda f: (-RISK_ORDER.index(f.severity), f.line, f.rule))
    return CodeAnalysis(
        language=language, risk_level=max_risk([f.severity for f in ordered]), findings=ordered, tool=tool
    )


# ------------------------------------------------------------------------- python
_BANDIT_SEVERITY: dict[str, RiskLevel] = {"LOW": "low", "MEDIUM": "medium", "HIGH": "high"}
# Calls that run arbitrary code or wipe data: bandit rates some of them only "medium".
_CRITICAL_BANDIT_TESTS = {"B602", "B605", "B102", "B307"}


def analyze_python(code: str) -> CodeAnalysis:
    """
    Run bandit on a Python snippet.

    Shell execution with ``shell=True``, ``os.system``, ``exec`` and ``eval`` are raised to
    ``critical`` when bandit is highly confident; a snippet that does not parse is ``medium``
    (it cannot be analysed).

    :param code: Python source.
    """
    try:
        ast.parse(code)
    except SyntaxError as exc:
        return _analysis(
            "python",
            [Finding("SYNTAX", "medium", f"Python syntax error, not analysed: {exc.msg}", exc.lineno or 1)],
            "bandit",
        )
    from bandit.core import config as bandit_config
    from bandit.core import manager as bandit_manager

    findings: list[Finding] = []
    with tempfile.TemporaryDirectory(prefix="hlml-bandit-") as tmp:
        path = os.path.join(tmp, "snippet.py")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(code)
        manager = bandit_manager.BanditManager(bandit_config.BanditConfig(), "file", quiet=True)
        manager.discover_files([path])
        manager.run_tests()
        for issue in manager.get_issue_list():
            severity = _BANDIT_SEVERITY.get(str(issue.severity).upper(), "low")
            if issue.test_id in _CRITICAL_BANDIT_TESTS and str(issue.confidence).upper() == "HIGH":
                severity = "critical" if severity == "high" else "high"
            findings.append(Finding(issue.test_id, severity, issue.text, int(issue.lineno or 1)))
    return _analysis("python", findings, "bandit")


# ---------------------------------------------------------------------------- sql
@dataclass(frozen=True)
class _Rule:
    rule: str
    severity: RiskLevel
    pattern: re.Pattern[str]
    message: str


def _rules(*items: tuple[str, RiskLevel, str, str]) -> tuple[_Rule, ...]:
    return tuple(_Rule(r, s, re.compile(p, re.IGNORECASE | re.DOTALL), m) for r, s, p, m in items)


_SQL_RULES = _rules(
    (
        "SQL001",
        "critical",
        r"\bdrop\s+(table|database|schema|view|index|user|role)\b",
        "DROP removes an object",
    ),
    ("SQL002", "critical", r"\btruncate\b", "TRUNCATE deletes every row"),
    ("SQL003", "high", r"\bdelete\s+from\s+[\w.\"`\[\]]+\s*$", "DELETE without WHERE deletes every row"),
    (
        "SQL004",
        "high",
        r"\bupdate\s+[\w.\"`\[\]]+\s+set\b(?!.*\bwhere\b)",
        "UPDATE without WHERE changes every row",
    ),
    ("SQL005", "medium", r"\bdelete\s+from\b.*\bwhere\b", "DELETE with a WHERE clause"),
    (
        "SQL006",
        "medium",
        r"\balter\s+table\b.*\bdrop\b",
        "ALTER TABLE ... DROP removes a column or constraint",
    ),
    ("SQL007", "medium", r"\b(grant|revoke)\b", "GRANT/REVOKE changes privileges"),
    (
        "SQL008",
        "low",
        r"\b(insert\s+into|update\s+[\w.\"`\[\]]+\s+set|merge\s+into|create\s+(table|view|index))\b",
        "statement writes data or schema",
    ),
)


def _strip_sql_comments(sql: str) -> str:
    sql = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), sql, flags=re.DOTALL)
    return re.sub(r"--[^\n]*", "", sql)


def _statements(text: str, separator: str) -> list[tuple[int, str]]:
    """``(line, statement)`` pairs, split on ``separator`` outside quotes; line of the first character."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    line = 1
    start_line: int | None = None
    quote = ""
    for ch in text:
        if not quote and ch in separator:
            if start_line is not None:
                out.append((start_line, "".join(buf).strip()))
            buf, start_line = [], None
        else:
            if quote:
                quote = "" if ch == quote else quote
            elif ch in "'\"":
                quote = ch
            if start_line is None and not ch.isspace():
                start_line = line
            buf.append(ch)
        if ch == "\n":
            line += 1
    if start_line is not None:
        out.append((start_line, "".join(buf).strip()))
    return out


def _apply(rules: tuple[_Rule, ...], statements: list[tuple[int, str]], exclusive: bool) -> list[Finding]:
    findings: list[Finding] = []
    for line, stmt in statements:
        for rule in rules:
            if rule.pattern.search(stmt):
                findings.append(Finding(rule.rule, rule.severity, f"{rule.message}: {stmt[:80]}", line))
                if exclusive:
                    break
    return findings


_SQL_LITERAL = re.compile(r"'(?:[^']|'')*'")


def analyze_sql(code: str) -> CodeAnalysis:
    """
    Flag destructive SQL: DROP, TRUNCATE, DELETE/UPDATE without WHERE, privilege changes.

    String literals and comments are ignored (``SELECT 'DROP TABLE x'`` is harmless).

    :param code: one or more SQL statements.
    """
    statements = [
        (line, _SQL_LITERAL.sub("''", stmt)) for line, stmt in _statements(_strip_sql_comments(code), ";")
    ]
    return _analysis("sql", _apply(_SQL_RULES, statements, exclusive=True), "hlml-rules")


# -------------------------------------------------------------------------- shell
_SHELL_RULES = _rules(
    (
        "SH001",
        "critical",
        r"\brm\s+(-[a-z]*r[a-z]*f?[a-z]*|-[a-z]*f[a-z]*r[a-z]*|--recursive)\b[^|;&]*\s(/|/\*|~|\$HOME|/\w+)(\s|$)",
        "recursive delete of a system or home directory",
    ),
    ("SH002", "high", r"\brm\s+(-[a-z]*r[a-z]*|--recursive)\b", "recursive delete"),
    ("SH003", "critical", r"\b(mkfs(\.\w+)?|fdisk|wipefs)\b", "formats or repartitions a disk"),
    ("SH004", "critical", r"\bdd\b[^\n]*\bof=/dev/", "writes raw data to a device"),
    ("SH005", "critical", r">\s*/dev/(sd[a-z]|nvme\d|hd[a-z]|xvd[a-z])", "overwrites a block device"),
    ("SH006", "critical", r":\(\)\s*\{\s*:\s*\|\s*:\s*&\s*\}\s*;\s*:", "fork bomb"),
    (
        "SH007",
        "high",
        r"\b(curl|wget)\b[^|\n]*\|\s*(sudo\s+)?(ba|z|da)?sh\b",
        "pipes a downloaded script into a shell",
    ),
    ("SH008", "high", r"\bchmod\s+(-R\s+)?0?777\b", "makes files writable by everyone"),
    ("SH009", "high", r"\b(shutdown|reboot|halt|poweroff)\b", "stops the machine"),
    ("SH010", "high", r"\bkill\s+-9\s+-1\b|\bkillall\b|\bpkill\b", "kills many processes"),
    ("SH011", "medium", r"\bsudo\b", "runs with root privileges"),
    ("SH012", "medium", r"\b(git\s+push\s+.*--force|git\s+reset\s+--hard)\b", "rewrites version history"),
    ("SH013", "low", r"\brm\b", "deletes files"),
)


def analyze_shell(code: str) -> CodeAnalysis:
    """
    Flag destructive shell commands: recursive deletes, disk formatting, ``curl | sh``, etc.

    :param code: shell script.
    """
    lines = [
        (i, ln)
        for i, ln in enumerate(code.splitlines(), start=1)
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    return _analysis("shell", _apply(_SHELL_RULES, lines, exclusive=True), "hlml-rules")


# ----------------------------------------------------------------------- dispatch
_SQL_START = re.compile(
    r"^\s*(select|insert|update|delete|drop|create|alter|truncate|with|grant|revoke|merge)\b", re.IGNORECASE
)


def detect_language(code: str) -> Language:
    """Guess the language of a snippet: a shell shebang, a leading SQL keyword, valid Python, else shell."""
    first = code.lstrip().splitlines()[0] if code.strip() else ""
    if first.startswith("#!"):
        return "python" if "python" in first else "shell"
    if _SQL_START.match(_strip_sql_comments(code)):
        return "sql"
    try:
        ast.parse(code)
    except SyntaxError:
        return "shell"
    return "python"


def analyze_code(code: str, language: str | None = None) -> CodeAnalysis:
    """
    Analyse a snippet in ``language`` (``python``, ``sql``, ``shell``/``bash``/``sh``; guessed when ``None``).

    :param code: the snippet.
    :param language: its language.
    """
    lang = (language or detect_language(code)).strip().lower()
    lang = {"bash": "shell", "sh": "shell", "py": "python", "postgresql": "sql", "mysql": "sql"}.get(
        lang, lang
    )
    if lang == "python":
        return analyze_python(code)
    if lang == "sql":
        return analyze_sql(code)
    if lang == "shell":
        return analyze_shell(code)
    raise ValueError(
        f"language must be one of {', '.join(LANGUAGES)} (or None to detect it), got {language!r}"
    )
