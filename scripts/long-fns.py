#!/usr/bin/env python3
"""Lists functions in crates/*/src longer than a limit (default 150 lines); exits 1 if any.

A function spans from its `fn` line to the line of its matching closing brace. Braces inside
strings, chars and comments are skipped (raw strings r"…"/r#"…"# included), which is enough for
this code base; it is a review aid and a CI gate, not a parser.
    python3 scripts/long-fns.py [--limit N] [--top K]
"""
import argparse, pathlib, re, sys

FN = re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)')


def code_only(text):
    """The text with strings, chars and comments blanked (newlines kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith('//', i):
            j = text.find('\n', i)
            j = n if j < 0 else j
            out.append(' ' * (j - i)); i = j
        elif text.startswith('/*', i):
            j = text.find('*/', i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r'[^\n]', ' ', text[i:j])); i = j
        elif (m := re.match(r'b?r(#*)"', text[i:i + 10])) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == '_')):
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r'[^\n]', ' ', text[i:j])); i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == '\\' else 1
            out.append(re.sub(r'[^\n]', ' ', text[i:j + 1])); i = j + 1
        elif c == "'" and (m := re.match(r"'(\\.[^']*|[^\\'])'", text[i:i + 12])):
            out.append(' ' * m.end()); i += m.end()
        else:
            out.append(c); i += 1
    return ''.join(out)


def functions(path):
    lines = code_only(path.read_text()).split('\n')
    for start, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        depth, opened = 0, False
        for end in range(start, len(lines)):
            for ch in lines[end]:
                if ch == '{':
                    depth += 1; opened = True
                elif ch == '}':
                    depth -= 1
                elif ch == ';' and not opened and depth == 0:
                    break  # a declaration without a body
            else:
                if opened and depth == 0:
                    yield m.group(6), start + 1, end - start + 1
                    break
                continue
            break


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--limit', type=int, default=150)
    ap.add_argument('--top', type=int, default=0, help='also print the K longest')
    a = ap.parse_args()
    root = pathlib.Path(__file__).resolve().parent.parent
    found = []
    for p in sorted(root.glob('crates/*/src/**/*.rs')):
        for name, line, length in functions(p):
            found.append((length, f'{p.relative_to(root)}:{line}', name))
    found.sort(reverse=True)
    for length, where, name in found[:a.top]:
        print(f'{length:5}  {where}  {name}')
    over = [f for f in found if f[0] > a.limit]
    for length, where, name in over:
        print(f'error: {where}: fn {name} is {length} lines (limit {a.limit}): split it', file=sys.stderr)
    return 1 if over else 0


if __name__ == '__main__':
    sys.exit(main())
