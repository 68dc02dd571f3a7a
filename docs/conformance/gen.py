#!/usr/bin/env python3
"""Regenerates docs/conformance.md from the statement lists and the tests' citations.

Usage: python3 docs/conformance/gen.py [--check] [--report]
  --check   fail if docs/conformance.md differs from what the tests' citations give (CI).
  --report  print unknown or version-suspicious citations and the untested server ids.
"""
import os
import re
import sys
from collections import defaultdict, OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import spec5  # noqa: E402
import spec311  # noqa: E402

S5 = OrderedDict((s[0], s) for s in spec5.STATEMENTS)
S3 = OrderedDict((s[0], s) for s in spec311.STATEMENTS)

REASONS = {
    "C": "client requirement",
    "WS": "WebSocket: transport issue",
    "AUTH": "enhanced auth: plugin-runtime issue",
    "AUTHZ": "authorization: plugin-runtime issue",
    "CONF": "conformance clause",
    "DESIGN": "does not arise in this design",
}

ID_RE = re.compile(r"MQTT-(\d+(?:[.-]\d+)*)-(\d+)((?:\s*(?:,|/|and|or|to)\s*-\d+\b)*)")
M311 = re.compile(r"3\.1\.1|V311|v311|MQTTv311|MQTT 3\b")
M5 = re.compile(r"(?<![\d.])5\.0(?![\d.])|\bV5\b|\bv5\b|MQTTv5|MQTT 5\b")
AFTER311 = re.compile(r"^\s*(?:\(3\.1\.1\)|\[3\.1\.1\]|of 3\.1\.1|in 3\.1\.1|\(MQTT 3\.1\.1\))")
AFTER5 = re.compile(r"^\s*(?:\(5\.0\)|\[5\.0\]|of 5\.0|in 5\.0)")
EXERCISES_311 = re.compile(r"\bV311\b|v311|Rumqtt4|rumqttc::v4|MQTTv311|mqttv311|3\.1\.1 and 5\.0|5\.0 and 3\.1\.1|3\.1\.1 or 5\.0|both protocol versions|both versions")
# Unit tests of protocol-independent machinery check the 3.1.1 twin of a 5.0 statement too.
AGNOSTIC_MODULES = {"topic", "router", "session", "message", "store", "broker"}

# Citations whose statement does not match what the test checks: (id, version, test label)
# -> note. They are left out of the tables and listed under "Citations to fix".
MISCITED = {
}


def exercises_311(o):
    if o.get("python"):
        return "MQTTv311" in o["body"]
    if o["file"].startswith(("broker" + os.sep, "plugin-sdk" + os.sep)) and o["module"] and o["module"][0] in AGNOSTIC_MODULES:
        return True
    return bool(EXERCISES_311.search(o["name"] + "\n" + o["doc"] + "\n" + o["body"]))


def normalise(section, n):
    sid = "MQTT-%s-%s" % (section, n)
    if section == "3-8.3":
        return "MQTT-3.8.3-%s" % n, "311"
    if sid in spec5.ALIASES:
        return spec5.ALIASES[sid], "5"
    return sid, None


BOTH = re.compile(r"^\s*\((?:3\.1\.1 and 5\.0|5\.0 and 3\.1\.1|both versions|5\.0 and 3\.1\.1 alike)\)")
COMMENT = re.compile(r"^\s*(?://[/!]?|#)\s?")


def logical_lines(text):
    """Joins runs of comment lines into one line each, so a marker reaches wrapped ids."""
    out, run = [], []
    for line in text.split("\n"):
        if COMMENT.match(line):
            run.append(COMMENT.sub("", line, count=1))
            continue
        if run:
            out.append(" ".join(run))
            run = []
        out.append(line)
    if run:
        out.append(" ".join(run))
    return out


def citations(text):
    """Yields (id, version) for every statement id in text; version '5', '311' or None."""
    for line in logical_lines(text):
        for m in ID_RE.finditer(line):
            section, n, more = m.group(1), m.group(2), m.group(3)
            nums = [n] + re.findall(r"-(\d+)", more or "")
            before = line[:m.start()]
            cut = max([before.rfind(c) for c in ';()"|'] + [before.rfind(". ")])
            seg = before[cut + 1:] if cut >= 0 else before
            ver = None
            last311 = max((x.end() for x in M311.finditer(seg)), default=-1)
            last5 = max((x.end() for x in M5.finditer(seg)), default=-1)
            if last311 > last5:
                ver = "311"
            elif last5 > last311:
                ver = "5"
            after = line[m.end():m.end() + 40]
            if re.match(r"^\s*family\b", after):
                continue  # "MQTT-x family": related to, not a check of, the statement
            vers = [ver]
            if BOTH.match(after):
                vers = ["5", "311"]
            elif AFTER311.match(after):
                vers = ["311"]
            elif AFTER5.match(after):
                vers = ["5"]
            for k in nums:
                for v in vers:
                    sid, forced = normalise(section, k)
                    yield sid, forced or v


def resolve(sid, ver):
    """Which table a citation belongs to: ('5'|'311'|None, note)."""
    in5, in3 = sid in S5, sid in S3
    if ver == "311":
        return ("311", None) if in3 else (None, "marked 3.1.1 but not a 3.1.1 id")
    if ver == "5":
        return ("5", None) if in5 else (None, "marked 5.0 but not a 5.0 id")
    if in5:
        return "5", None
    if in3:
        return "311", None
    return None, "not a statement id of either spec"


# ---------------------------------------------------------------- Rust parsing

def strip_code_noise(line):
    """Line with string/char literal contents and comments blanked, for brace counting."""
    out, i, n = [], 0, len(line)
    while i < n:
        c = line[i]
        if c == "/" and i + 1 < n and line[i + 1] == "/":
            break
        if c == '"':
            j = i + 1
            while j < n and line[j] != '"':
                j += 2 if line[j] == "\\" else 1
            out.append('""')
            i = j + 1
            continue
        if c == "'" and i + 2 < n and (line[i + 2] == "'" or (line[i + 1] == "\\" and i + 3 < n)):
            j = line.find("'", i + 2 if line[i + 1] != "\\" else i + 3)
            if j != -1 and j - i <= 10:
                out.append("' '")
                i = j + 1
                continue
        out.append(c)
        i += 1
    return "".join(out)


def rust_module(path):
    rel = os.path.relpath(path, ROOT)
    parts = rel[:-3].split(os.sep)
    if parts[:2] == ["broker", "src"]:
        mods = parts[2:]
    elif parts[:3] == ["plugin-sdk", "topic", "src"]:
        # The topic rules live in their own crate, shared with the plugin SDK; they are still
        # the broker's `topic` module.
        mods = ["topic"] + parts[3:]
    elif parts[:2] == ["tests", "tests"]:
        mods = parts[2:]
    else:
        mods = parts
    if mods and mods[-1] in ("mod", "lib", "main"):
        mods = mods[:-1]
    return mods


TEST_ATTR = re.compile(r"^\s*#\[(?:tokio::test|test|rstest|test_case|async_std::test|conformance_test|[\w:]*test)\b")
FN_RE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:async\s+)?(?:unsafe\s+)?fn\s+(\w+)")
MOD_RE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*\{")
ROW_RE = re.compile(r'^\s*\(?\s*"((?:[^"\\]|\\.)*)"\s*,?(.*)$')


def parse_rust(path):
    """Returns a list of fns: dict(name, module, is_test, text, rows, start, end, calls)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    base = rust_module(path)
    fns = []
    mod_stack = []  # (name, depth at open)
    depth = 0
    i = 0
    pending = []  # preceding doc/attr lines
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        m_mod = MOD_RE.match(line)
        m_fn = FN_RE.match(line)
        if m_mod:
            mod_stack.append((m_mod.group(1), depth))
        if m_fn:
            name = m_fn.group(1)
            is_test = any(TEST_ATTR.match(p) for p in pending)
            # find body extent
            d = 0
            started = False
            j = i
            while j < len(lines):
                code = strip_code_noise(lines[j])
                for ch in code:
                    if ch == "{":
                        d += 1
                        started = True
                    elif ch == "}":
                        d -= 1
                if started and d <= 0:
                    break
                if not started and code.rstrip().endswith(";"):
                    break
                j += 1
            body = lines[i:j + 1]
            rows = []
            prev = ""
            for k, bl in enumerate(body):
                rm = ROW_RE.match(bl)
                tuple_row = re.match(r'^\s*\(\s*"', bl)
                call_row = prev.rstrip().endswith("(") and re.match(r'^\s*"', bl)
                if rm and "MQTT-" in rm.group(1) and (tuple_row or call_row):
                    rows.append((rm.group(1), rm.group(2)))
                if bl.strip():
                    prev = bl
            fns.append({
                "name": name,
                "module": base + [s[0] for s in mod_stack],
                "is_test": is_test,
                "doc": "\n".join(pending),
                "body": "\n".join(body),
                "rows": rows,
                "file": os.path.relpath(path, ROOT),
                "line": i + 1,
            })
            # account braces of the fn body in depth tracking
            for k in range(i, min(j + 1, len(lines))):
                code = strip_code_noise(lines[k])
                depth += code.count("{") - code.count("}")
            while mod_stack and depth <= mod_stack[-1][1]:
                mod_stack.pop()
            pending = []
            i = j + 1
            continue
        code = strip_code_noise(line)
        depth += code.count("{") - code.count("}")
        while mod_stack and depth <= mod_stack[-1][1]:
            mod_stack.pop()
        if stripped.startswith("///") or stripped.startswith("#[") or stripped.startswith("//"):
            pending.append(line)
        elif stripped == "":
            pass
        else:
            pending = []
        i += 1
    return fns


# -------------------------------------------------------------- Python parsing

def parse_python(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    rel = os.path.relpath(path, ROOT)
    fns = []
    defs = [(k, re.match(r"^(\s*)(?:async\s+)?def\s+(\w+)", l)) for k, l in enumerate(lines)]
    defs = [(k, m) for k, m in defs if m]
    for idx, (k, m) in enumerate(defs):
        indent = len(m.group(1))
        end = len(lines)
        for k2 in range(k + 1, len(lines)):
            l2 = lines[k2]
            if l2.strip() and (len(l2) - len(l2.lstrip())) <= indent and not l2.lstrip().startswith(("#", ")", "]")):
                end = k2
                break
        # decorators and comments just above
        pre = []
        k0 = k - 1
        while k0 >= 0 and (lines[k0].strip().startswith(("@", "#"))):
            pre.insert(0, lines[k0])
            k0 -= 1
        # enclosing class
        cls = None
        for k3 in range(k - 1, -1, -1):
            cm = re.match(r"^(\s*)class\s+(\w+)", lines[k3])
            if cm and len(cm.group(1)) < indent:
                cls = cm.group(2)
                break
        name = m.group(2)
        fns.append({
            "name": name,
            "module": [rel] + ([cls] if cls else []),
            "is_test": name.startswith(("test", "check_")),
            "doc": "\n".join(pre),
            "body": "\n".join(lines[k:end]),
            "rows": [],
            "file": rel,
            "line": k + 1,
            "python": True,
        })
    return fns


# ------------------------------------------------------------------ scanning

def walk(paths, exts):
    for p in paths:
        full = os.path.join(ROOT, p)
        if os.path.isfile(full):
            yield full
            continue
        for dirpath, dirnames, filenames in os.walk(full):
            dirnames[:] = [d for d in dirnames if d not in ("target", "__pycache__", ".git", "node_modules")]
            for fn in sorted(filenames):
                if fn.endswith(exts):
                    yield os.path.join(dirpath, fn)


def test_label(fn):
    if fn.get("python"):
        return "%s::%s" % ("::".join(fn["module"]), fn["name"])
    mods = fn["module"]
    if fn["file"].startswith("tests" + os.sep + "tests"):
        return "::".join(mods + [fn["name"]])
    return "::".join(mods + [fn["name"]])


def scan():
    """Returns (cites5, cites311, odd, src5, src311).

    cites*: id -> OrderedDict(label -> set of row names)    (test citations)
    twin311: 5.0 id -> OrderedDict(label -> rows) for tests/rows that also exercise 3.1.1
    src*: id -> list of 'file:line' in non-test code
    """
    cites = {"5": defaultdict(OrderedDict), "311": defaultdict(OrderedDict)}
    twin = defaultdict(OrderedDict)
    odd = []
    miscited = set()
    src = {"5": defaultdict(list), "311": defaultdict(list)}

    def add(table, sid, label, row=None):
        d = table[sid].setdefault(label, [])
        if row and row not in d:
            d.append(row)

    rust_files = list(walk(["broker/src", "plugin-sdk/topic/src", "tests"], (".rs",)))
    py_files = list(walk(["tests"], (".py",)))
    all_fns = []
    for path in rust_files:
        all_fns.extend(parse_rust(path))
    for path in py_files:
        all_fns.extend(parse_python(path))

    by_file = defaultdict(list)
    for fn in all_fns:
        by_file[fn["file"]].append(fn)

    for file, fns in by_file.items():
        tests = [f for f in fns if f["is_test"]]
        in_test_tree = ("/tests/" in "/" + file + "/" or file.startswith("tests" + os.sep)
                        or any(f["is_test"] for f in fns))
        def owners_of(fn):
            """Tests that reach fn through calls within the file."""
            seen, stack, found = {fn["name"]}, [fn], []
            while stack:
                cur = stack.pop()
                pat = re.compile(r"\b%s\s*\(" % re.escape(cur["name"]))
                for other in fns:
                    if other is cur or other["name"] in seen:
                        continue
                    body = other["body"].split("\n", 1)[1] if "\n" in other["body"] else ""
                    if pat.search(body):
                        seen.add(other["name"])
                        if other["is_test"]:
                            found.append(other)
                        else:
                            stack.append(other)
            return found

        for fn in fns:
            helper = not fn["is_test"]
            test_code = (file.startswith("tests" + os.sep) or (os.sep + "tests" + os.sep) in file
                         or "tests" in fn["module"])
            if helper and not test_code:
                continue  # production code: its citations feed the "cited at" hints only
            owners = owners_of(fn) if helper else [fn]
            text = fn["doc"] + "\n" + fn["body"]
            row_names = [r[0] for r in fn["rows"]]
            for o in owners:
                label = test_label(o)
                otext = o["doc"] + o["body"] + o["name"]
                ex311 = exercises_311(o)
                only311 = bool(re.search(r"v311|v3_|_v3\b|3_1_1|v4_|_v4\b", o["name"])) and "v5" not in o["name"]
                only5 = "v5" in o["name"] and not only311 and "v311" not in o["name"]

                def take(tab, sid, row=None, row_ex311=None):
                    if (sid, tab, label) in MISCITED:
                        miscited.add((sid, tab, label))
                        return
                    if helper and ((tab == "5" and only311) or (tab == "311" and only5)):
                        if tab == "5" and (row_ex311 if row_ex311 is not None else ex311):
                            add(twin, sid, label, row)
                        return
                    add(cites[tab], sid, label, row)
                    if tab == "5" and (row_ex311 if row_ex311 is not None else ex311):
                        add(twin, sid, label, row)

                for rname, rest in fn["rows"]:
                    row_ex311 = None
                    if re.search(r"\bv3\b|V311|\bNone\b", rest) or "3.1.1" in rname:
                        row_ex311 = True
                    elif re.search(r"\bv5\b|\bV5\b", rest):
                        row_ex311 = False
                    for sid, ver in citations(rname):
                        tab, note = resolve(sid, ver)
                        if tab is None:
                            odd.append((sid, label, "row " + rname, note))
                            continue
                        take(tab, sid, rname, row_ex311)
                rest_text = text
                for rname in row_names:
                    rest_text = rest_text.replace('"%s"' % rname, '""')
                for sid, ver in citations(rest_text):
                    if ver is None and not helper and only311 and sid in S3:
                        ver = "311"  # an unmarked id in a test named for 3.1.1 only
                    tab, note = resolve(sid, ver)
                    if tab is None:
                        odd.append((sid, label, "", note))
                        continue
                    take(tab, sid)
    for path in rust_files:
        rel = os.path.relpath(path, ROOT)
        if "/tests/" in "/" + rel or rel.startswith("tests" + os.sep):
            continue
        test_ranges = []
        for fn in by_file.get(rel, []):
            if fn["is_test"] or fn["module"][-1:] == ["tests"]:
                test_ranges.append((fn["line"], fn["line"] + fn["body"].count("\n")))
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
        in_tests_mod = False
        for k, l in enumerate(lines, 1):
            if re.match(r"^\s*mod tests\s*\{", l):
                in_tests_mod = True
            if in_tests_mod or any(a <= k <= b for a, b in test_ranges):
                continue
            for sid, ver in citations(l):
                tab, note = resolve(sid, ver)
                if tab:
                    loc = "%s:%d" % (rel.replace("broker" + os.sep + "src" + os.sep, ""), k)
                    if loc not in src[tab][sid]:
                        src[tab][sid].append(loc)
    scan.miscited = sorted(miscited)
    return cites["5"], cites["311"], twin, odd, src["5"], src["311"]


# ------------------------------------------------------------------ rendering

def fmt_tests(d, twin_of=None):
    parts = []
    for label, rows in d.items():
        s = "`%s`" % label
        if rows:
            s += " (rows: " + "; ".join('"%s"' % r.replace("|", "\\|") for r in rows) + ")"
        if twin_of:
            s += " [as 5.0 %s]" % twin_of
        parts.append(s)
    return "<br>".join(parts)


def esc(s):
    return s.replace("|", "\\|")


def build():
    c5, c3, twin, odd, src5, src3 = scan()
    out_rows = {"5": [], "311": []}
    counts = {"5": defaultdict(int), "311": defaultdict(int)}
    untested = {"5": [], "311": []}
    for tab, stmts in (("5", S5), ("311", S3)):
        cites = c5 if tab == "5" else c3
        srcs = src5 if tab == "5" else src3
        for sid, st in stmts.items():
            who, text, hint = st[1], st[2], st[3]
            twins = st[4] if tab == "311" else []
            direct = cites.get(sid, {})
            via = [(t, twin.get(t, {})) for t in twins if twin.get(t)]
            if direct or via:
                status = "tested"
                cell = fmt_tests(direct) if direct else ""
                seen = set(direct)
                for t, d in via:
                    d2 = OrderedDict((k, v) for k, v in d.items() if k not in seen)
                    seen.update(d2)
                    if d2:
                        cell += ("<br>" if cell else "") + fmt_tests(d2, t)
                counts[tab]["tested"] += 1
            elif who == "S":
                status = "not tested yet"
                where = hint
                cited = srcs.get(sid, [])
                if cited:
                    where += ("; " if where else "") + "cited at " + ", ".join(cited[:4]) + (" …" if len(cited) > 4 else "")
                if tab == "311" and twins:
                    tested5 = [t for t in twins if c5.get(t)]
                    if tested5:
                        where += "; 5.0 twin tested on v5 only: " + ", ".join(tested5)
                first = where.split(" ", 1)[0] if where else ""
                cell = ("enforced in: " + where) if (".rs" in first or first == "codec") else where
                counts[tab]["not tested yet"] += 1
                untested[tab].append(sid)
            else:
                status = "n/a"
                cell = REASONS[who] + ((": " + hint) if hint and hint != REASONS[who] else "")
                counts[tab]["n/a: " + REASONS[who]] += 1
            out_rows[tab].append("| %s | %s | %s | %s |" % (sid, esc(text), status, cell))
    return out_rows, counts, untested, odd


INTRO = """# MQTT conformance matrix

This file maps every normative statement of the two OASIS specifications moat implements to the
tests that check it:

* [MQTT Version 5.0](https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html)
  (OASIS Standard, 7 March 2019): {n5} statements, `MQTT-1.5.4-1` to `MQTT-6.0.0-4`;
* [MQTT Version 3.1.1](https://docs.oasis-open.org/mqtt/mqtt/v3.1.1/os/mqtt-v3.1.1-os.html)
  (OASIS Standard, 29 October 2014): {n3} statements, `MQTT-1.5.3-1` to `MQTT-7.1.2-1`.

The two specifications reuse the same ids for different rules (5.0 `MQTT-3.1.2-22` is the
keep-alive timeout, 3.1.1 `MQTT-3.1.2-22` is "no password without a user name"), so each has its
own table. The statement column is a one-line paraphrase; the specification text is normative.

## How to read it

* **tested**: at least one test cites the id. Tests are named `module::test_name`: unit tests
  under `broker/src` (for example `codec::tests::malformed::…`, `topic::tests::…`,
  `router::tests::tree::…`), end-to-end tests as `e2e::<file>::<test>` (`tests/tests/e2e/`), Python
  tests as `tests/python/<file>.py::<test>`. For the table-driven codec test the rows that cite
  the id are listed. In the 3.1.1 table, `[as 5.0 MQTT-x]` marks a test or row that cites the
  equivalent 5.0 statement while exercising MQTT 3.1.1 (a `v3`/`None` codec row, or a test that
  uses a 3.1.1 client).
* **not tested yet**: a rule the broker must follow (or a client rule it enforces) that no test
  cites. The last column says where the broker implements it ("cited at" lists source lines
  that name the id), so a test can be written against it.
* **n/a**: the statement does not apply to this broker today. Reasons: *client requirement*
  (a rule for clients that the broker does not check), *WebSocket: transport issue* and
  *enhanced auth* / *authorization: plugin-runtime issue* (features not built yet; see
  README "Current limits"), *conformance clause* (section 7 wording, not a behaviour) and *does
  not arise in this design*. A client rule the broker does check (it refuses the packet) counts
  as a broker rule.

## How it is maintained

A test "checks" a statement when its doc comment, name, body or table-row label cites the id
(helpers in test code count for the tests that call them). Ids without a version are 5.0
numbering; cite a 3.1.1 statement as `3.1.1 MQTT-x`, `3.1.1: MQTT-x` or `MQTT-x of 3.1.1`. An id
that exists only in 3.1.1 (such as `MQTT-4.8.0-1`), or an id cited by a test whose name marks
it as 3.1.1 only (`..._v311`), needs no marker; `(3.1.1 and 5.0)` after an id cites both.
`MQTT-x family` (a related rule, not that statement) is not a citation. To see the citations:

```sh
grep -rn "MQTT-[0-9]" broker/src plugin-sdk/topic/src tests
```

The tables are generated from that grep by a script kept out of the repository
(`docs/conformance/gen.py`, with the statement lists in `spec5.py` and `spec311.py`); rerun
it after adding tests, or edit the rows by hand following the same rules.

## Summary

{summary}

{untested}
"""


def main():
    import datetime
    rows, counts, untested, odd = build()
    cats = ["tested", "not tested yet"] + ["n/a: " + REASONS[k] for k in ("C", "WS", "AUTH", "AUTHZ", "CONF", "DESIGN")]
    lines = ["| status | MQTT 5.0 | MQTT 3.1.1 |", "| --- | ---: | ---: |"]
    for c in cats:
        a, b = counts["5"].get(c, 0), counts["311"].get(c, 0)
        if a or b:
            lines.append("| %s | %d | %d |" % (c, a, b))
    lines.append("| **total** | **%d** | **%d** |" % (len(S5), len(S3)))
    ut = ("Server-side statements not tested yet:\n\n* 5.0: " + (", ".join("`%s`" % s for s in untested["5"]) or "none")
          + "\n* 3.1.1: " + (", ".join("`%s`" % s for s in untested["311"]) or "none"))
    doc = INTRO.format(n5=len(S5), n3=len(S3), summary="\n".join(lines), untested=ut)
    hdr = "| id | statement (paraphrase) | status | tests / reason |\n| --- | --- | --- | --- |\n"
    if scan.miscited:
        doc += ("\n## Citations to fix\n\nThese tests cite an id whose statement is not what they check; the"
                " tables leave the citation out until the test is corrected.\n\n")
        for sid, tab, label in scan.miscited:
            doc += "* `%s` cites %s `%s`: %s.\n" % (label, "5.0" if tab == "5" else "3.1.1", sid, MISCITED[(sid, tab, label)])
    doc += "\n## MQTT 5.0\n\n" + hdr + "\n".join(rows["5"]) + "\n"
    doc += "\n## MQTT 3.1.1\n\n" + hdr + "\n".join(rows["311"]) + "\n"
    out = os.path.join(ROOT, "docs", "conformance.md")
    if "--stdout" in sys.argv:
        sys.stdout.write(doc)
    elif "--check" in sys.argv:
        with open(out) as f:
            if f.read() != doc:
                sys.exit("docs/conformance.md is out of date: run python3 docs/conformance/gen.py")
    else:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:
            f.write(doc)
    if "--report" in sys.argv:
        print("counts 5.0:", dict(counts["5"]))
        print("counts 3.1.1:", dict(counts["311"]))
        print("untested 5.0 (%d):" % len(untested["5"]), " ".join(untested["5"]))
        print("untested 3.1.1 (%d):" % len(untested["311"]), " ".join(untested["311"]))
        for o in odd:
            print("ODD:", o)


if __name__ == "__main__":
    main()
