#!/usr/bin/env python3
"""The RustSec advisory facts `cargo deny` checks against, kept in the repository for machines
that cannot reach the advisory database's git repository (CI here reaches package registries
only).

  advisories-snapshot.py take DB_CHECKOUT OUT.tsv COMMIT DATE
      record the facts, one line per advisory, from a checkout of the database at COMMIT
      (committed at DATE, ISO 8601)
  advisories-snapshot.py expand IN.tsv DIR
      rebuild a database cargo-deny can read; prints the COMMIT and DATE it was taken at

`take` keeps what decides whether a crate version is affected (id, package, date, kind,
withdrawn date, patched and unaffected version ranges) and the advisory's address; it keeps
none of the advisories' text. `expand` writes that back in the database's layout
(crates/NAME/ID.md, TOML front matter) with a one-line title that points to the advisory.
"""

import pathlib
import sys
import tomllib

FIELDS = ["id", "package", "date", "informational", "withdrawn", "patched", "unaffected", "url"]


def front_matter(text: str) -> dict:
    """The TOML block between the first ```toml and the next ``` of an advisory file."""
    start = text.index("```toml") + len("```toml")
    end = text.index("```", start)
    return tomllib.loads(text[start:end])


def take(db: pathlib.Path, out: pathlib.Path, commit: str, date: str) -> None:
    rows = []
    for path in sorted(db.glob("crates/*/RUSTSEC-*.md")):
        meta = front_matter(path.read_text(encoding="utf-8"))
        adv, versions = meta["advisory"], meta.get("versions", {})
        row = {
            "id": adv["id"],
            "package": adv["package"],
            "date": adv["date"] if isinstance(adv["date"], str) else adv["date"].isoformat(),
            "informational": adv.get("informational", ""),
            "withdrawn": str(adv.get("withdrawn", "")),
            "patched": ";".join(versions.get("patched", [])),
            "unaffected": ";".join(versions.get("unaffected", [])),
            "url": f"https://rustsec.org/advisories/{adv['id']}.html",
        }
        for k, v in row.items():
            if "\t" in v or "\n" in v:
                raise SystemExit(f"{path}: field {k} holds a tab or newline")
        rows.append(row)
    with out.open("w", encoding="utf-8") as f:
        f.write(f"# source\t{commit}\t{date}\n")
        f.write("\t".join(FIELDS) + "\n")
        for row in rows:
            f.write("\t".join(row[k] for k in FIELDS) + "\n")
    print(f"{len(rows)} advisories recorded in {out}")


def toml_list(items: str) -> str:
    return "[" + ", ".join(f'"{v}"' for v in items.split(";") if v) + "]"


def expand(tsv: pathlib.Path, out: pathlib.Path) -> None:
    lines = tsv.read_text(encoding="utf-8").splitlines()
    source = lines[0].split("\t")
    if source[0] != "# source" or len(source) != 3 or lines[1].split("\t") != FIELDS:
        raise SystemExit(f"{tsv}: unexpected header {lines[:2]!r}")
    count = 0
    for line in lines[2:]:
        row = dict(zip(FIELDS, line.split("\t")))
        advisory = [
            f'id = "{row["id"]}"',
            f'package = "{row["package"]}"',
            f'date = "{row["date"]}"',
            f'url = "{row["url"]}"',
        ]
        if row["informational"]:
            advisory.append(f'informational = "{row["informational"]}"')
        if row["withdrawn"]:
            advisory.append(f'withdrawn = "{row["withdrawn"]}"')
        versions = [f"patched = {toml_list(row['patched'])}"]
        if row["unaffected"]:
            versions.append(f"unaffected = {toml_list(row['unaffected'])}")
        body = (
            "```toml\n[advisory]\n" + "\n".join(advisory) + "\n\n[versions]\n"
            + "\n".join(versions) + "\n```\n\n"
            + f"# {row['id']} ({row['package']})\n\nSee {row['url']}\n"
        )
        path = out / "crates" / row["package"] / f"{row['id']}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
        count += 1
    print(f"{count} advisories written under {out}", file=sys.stderr)
    print(f"{source[1]} {source[2]}")


def main() -> None:
    args = sys.argv[1:]
    if len(args) == 5 and args[0] == "take":
        take(pathlib.Path(args[1]), pathlib.Path(args[2]), args[3], args[4])
    elif len(args) == 3 and args[0] == "expand":
        expand(pathlib.Path(args[1]), pathlib.Path(args[2]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
