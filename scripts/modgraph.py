#!/usr/bin/env python3
"""modgraph.py - prints the module import graph of a Rust crate's src/ and fails on a cycle.

    scripts/modgraph.py [SRC_DIR ...]     (default: crates/xkafka/src crates/xkafka-bench/src)

A node is a source file. An edge A -> B means code in A names an item that B defines: a `use`,
or an inline path (`crate::x::Y`, `super::Y`, `child::Y`). Re-exports are followed to the file
that defines the item, so a facade (`pub use child::Thing` in a parent) is not itself a hop back
up; `mod` declarations are not imports; `#[cfg(test)]` modules are left out (tests may look
anywhere). A cycle is a set of files that import one another (a strongly connected component of
more than one file): the script names each, with the paths behind each of its arrows, and
exits 1 - unless that exact cycle is listed in scripts/modgraph.allow (a ratchet: cycles known
when the check was introduced, each to be broken; a listed cycle that grows fails too; one that is
gone but still listed is reported, to be removed from the list). Exit 0 means the graph is a DAG, so
every arrow can be drawn pointing down.

Plain Python 3 with no dependencies, and a text scan rather than a compiler pass: a path written
through a `use` alias of a module (`use super::status; status::Board`) counts through the `use`.
"""

import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(text):
    """Blanks comments, string and char literals (keeping newlines), so that paths in docs
    and strings are not read as imports."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    if text[i] == "\n":
                        out.append("\n")
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 260] or "") and not re.match(r"\w", text[i - 1:i] or " "):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}') or a lifetime ('a): only the former ends with '.
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:i + 12])
            if m:
                out.append("' '")
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching_brace(text, open_at):
    depth = 0
    for k in range(open_at, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return k
    return len(text) - 1


def drop_test_modules(text):
    """Removes `#[cfg(test)] mod x { ... }` blocks (and `#[cfg(test)] mod x;`)."""
    pattern = re.compile(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+" + IDENT + r"\s*([{;])")
    while True:
        m = pattern.search(text)
        if not m:
            return text
        if m.group(1) == ";":
            text = text[:m.start()] + text[m.end():]
        else:
            end = matching_brace(text, m.end() - 1)
            text = text[:m.start()] + "\n" * text.count("\n", m.start(), end) + text[end + 1:]


def split_inline_modules(text, modpath):
    """Yields (module path, text) for the file's own body and each inline `mod x { ... }`."""
    pieces = []
    pattern = re.compile(r"\bmod\s+(" + IDENT + r")\s*\{")
    body, pos = [], 0
    while True:
        m = pattern.search(text, pos)
        if not m:
            body.append(text[pos:])
            break
        body.append(text[pos:m.start()])
        end = matching_brace(text, m.end() - 1)
        pieces.extend(split_inline_modules(text[m.end():end], modpath + [m.group(1)]))
        pos = end + 1
    pieces.insert(0, (modpath, "".join(body)))
    return pieces


def parse_use_tree(s):
    """Expands a use tree into (path segments, bound name); '*' marks a glob."""
    # `as` needs its spaces to be told from a name containing "as" (baseline).
    s = re.sub(r"\s+as\s+", "@as@", s)
    s = re.sub(r"\s+", "", s)
    results = []

    def parse(s, prefix):
        # Splits at top-level commas.
        depth, start, parts = 0, 0, []
        for k, ch in enumerate(s):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(s[start:k])
                start = k + 1
        parts.append(s[start:])
        for part in parts:
            if not part:
                continue
            brace = part.find("{")
            if brace >= 0:
                head = part[:brace].rstrip(":")
                segs = [x for x in head.split("::") if x] if head else []
                parse(part[brace + 1:part.rfind("}")], prefix + segs)
                continue
            alias = None
            if "@as@" in part:
                part, alias = part.split("@as@", 1)
            segs = [x for x in part.split("::") if x]
            if segs == ["self"]:
                segs = []
            full = prefix + segs
            if not full:
                continue
            name = alias or full[-1]
            results.append((full, name))

    parse(s.lstrip(":"), [])
    return results


class Crate:
    def __init__(self, src):
        self.src = src
        self.files = {}  # file -> module path
        self.modules = {}  # tuple(module path) -> file
        self.texts = {}  # file -> [(modpath, text)]
        root = "lib.rs" if os.path.exists(os.path.join(src, "lib.rs")) else "main.rs"
        for dirpath, _, names in os.walk(src):
            for name in sorted(names):
                if not name.endswith(".rs"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), src)
                if rel.startswith("bin" + os.sep):
                    continue  # separate crates (binaries) with their own roots
                parts = rel[:-3].split(os.sep)
                if rel == root:
                    parts = []
                elif parts[-1] == "mod":
                    parts = parts[:-1]
                elif len(parts) == 1 and rel in ("lib.rs", "main.rs"):
                    continue
                self.files[rel] = parts
        for rel, parts in self.files.items():
            with open(os.path.join(src, rel), encoding="utf-8") as f:
                text = drop_test_modules(strip_comments_and_strings(f.read()))
            pieces = split_inline_modules(text, parts)
            self.texts[rel] = pieces
            for modpath, _ in pieces:
                self.modules.setdefault(tuple(modpath), rel)
        # Names each module binds through `use` (any visibility: a child sees its parent's).
        self.binds = {}
        self.globs = {}
        for rel, pieces in self.texts.items():
            for modpath, text in pieces:
                for tree in re.findall(r"\buse\s+([^;]+);", text):
                    for segs, name in parse_use_tree(tree):
                        absolute = self.absolute(segs, modpath)
                        if absolute is None:
                            # Another crate's item: naming it through this module is no import.
                            if name != "*":
                                self.binds[(tuple(modpath), name)] = None
                            continue
                        if name == "*":
                            self.globs.setdefault(tuple(modpath), []).append(absolute[:-1])
                        else:
                            self.binds[(tuple(modpath), name)] = absolute

    def children(self, modpath):
        n = len(modpath)
        return {m[n] for m in self.modules if len(m) == n + 1 and list(m[:n]) == list(modpath)}

    def absolute(self, segs, modpath):
        """A crate-absolute path for segs written in modpath, or None for another crate's."""
        if not segs:
            return None
        head = segs[0]
        if head == "crate":
            return segs[1:]
        if head == "self":
            return modpath + segs[1:]
        if head == "super":
            base = list(modpath)
            k = 0
            while k < len(segs) and segs[k] == "super":
                base = base[:-1]
                k += 1
            return base + segs[k:]
        if head in self.children(modpath):
            return modpath + segs
        return None

    def resolve(self, path, depth=0):
        """The file defining what the crate-absolute path names."""
        k = len(path)
        while k > 0 and tuple(path[:k]) not in self.modules:
            k -= 1
        if depth < 16 and k < len(path):
            module, name = tuple(path[:k]), path[k]
            if (module, name) in self.binds and self.binds[(module, name)] is None:
                return None
            target = self.binds.get((module, name))
            if target is not None and target != path[:k + 1]:
                return self.resolve(target + path[k + 1:], depth + 1)
        return self.modules.get(tuple(path[:k]))

    def graph(self):
        edges = {rel: set() for rel in self.files}
        self.why = {}
        for rel, pieces in self.texts.items():
            for modpath, text in pieces:
                paths = []
                for tree in re.findall(r"\buse\s+([^;]+);", text):
                    paths.extend(segs[:-1] if name == "*" else segs for segs, name in parse_use_tree(tree))
                rest = re.sub(r"\buse\s+[^;]+;", ";", text)
                heads = ["crate", "super", "self"] + sorted(self.children(modpath))
                inline = re.compile(
                    r"(?<![\w:])((?:" + "|".join(map(re.escape, heads)) + r")(?:\s*::\s*" + IDENT + r")+)"
                )
                for m in inline.finditer(rest):
                    paths.append(re.sub(r"\s", "", m.group(1)).split("::"))
                for segs in paths:
                    absolute = self.absolute(segs, modpath)
                    if absolute is None:
                        continue
                    target = self.resolve(absolute)
                    if target and target != rel:
                        edges[rel].add(target)
                        self.why.setdefault((rel, target), set()).add("::".join(segs))
        return edges


def cycles(edges):
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def allowed_cycles(path):
    """{src: [set of files]} from the allow list: `SRC: a <-> b <-> c` lines, # comments."""
    allowed = {}
    if not os.path.exists(path):
        return allowed
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            src, comp = line.split(":", 1)
            allowed.setdefault(src.strip(), []).append({c.strip() + ".rs" for c in comp.split("<->")})
    return allowed


def main(argv):
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    srcs = argv or ["crates/xkafka/src", "crates/xkafka-bench/src"]
    allowed = allowed_cycles("scripts/modgraph.allow")
    failed = False
    for src in srcs:
        crate = Crate(src)
        edges = crate.graph()
        print(f"== {src}: {len(edges)} files, {sum(map(len, edges.values()))} imports")
        for rel in sorted(edges):
            targets = ", ".join(t[:-3] for t in sorted(edges[rel]))
            print(f"  {rel[:-3]} -> {targets}" if targets else f"  {rel[:-3]}")
        known = list(allowed.get(src, []))
        for comp in cycles(edges):
            if set(comp) in known:
                known.remove(set(comp))
                print(f"known cycle (scripts/modgraph.allow) in {src}: " + " <-> ".join(c[:-3] for c in comp))
                continue
            failed = True
            print(f"CYCLE in {src}: " + " <-> ".join(c[:-3] for c in comp), file=sys.stderr)
            for rel in comp:
                for t in sorted(t for t in edges[rel] if t in comp):
                    names = ", ".join(sorted(crate.why[(rel, t)]))
                    print(f"    {rel[:-3]} -> {t[:-3]}: {names}", file=sys.stderr)
        for comp in known:
            print(
                f"STALE in scripts/modgraph.allow: {src}: " + " <-> ".join(sorted(c[:-3] for c in comp))
                + " is no longer a cycle (as listed): remove that line",
            )
    if failed:
        print("modgraph: the import graph has a cycle (above); make each arrow point one way", file=sys.stderr)
        return 1
    print("modgraph: no cycle outside scripts/modgraph.allow")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
