#!/usr/bin/env bash
# `cargo deny check` (advisories, bans, licenses, sources; rules in deny.toml), as CI runs it.
#
# The advisory database is a git repository that cargo-deny clones from the network. Where it
# cannot be reached (CI here reaches package registries only), the check runs against the
# facts recorded in .ci/advisories.tsv (scripts/advisories-snapshot.py: ids, crates and
# affected versions, no advisory text), rebuilt as a database of the same layout; the script
# says which database it used and how old it is. Refresh the snapshot with
#   python3 scripts/advisories-snapshot.py take CHECKOUT .ci/advisories.tsv COMMIT DATE
set -euo pipefail
cd "$(dirname "$0")/.."

# The database directory name below is cargo-deny 0.20's for the default database URL.
DENY_VERSION=0.20.2
DB_DIR_NAME=advisory-db-3157b0e258782691

if [[ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $DENY_VERSION" ]]; then
    echo "deny: installing cargo-deny $DENY_VERSION"
    cargo install --locked cargo-deny --version "$DENY_VERSION"
fi

dbs=$(mktemp -d)
trap 'rm -rf "$dbs"' EXIT
export OVL_ADVISORY_DBS="$dbs"

if timeout 120 cargo deny fetch db >"$dbs/fetch.log" 2>&1; then
    echo "deny: advisory database fetched from the network"
    exec cargo deny check
fi

echo "deny: the advisory database cannot be fetched: $(grep -v "^\s*$" "$dbs/fetch.log" | tail -n 1)"
db="$dbs/$DB_DIR_NAME"
rm -rf "$db"
read -r commit date < <(python3 scripts/advisories-snapshot.py expand .ci/advisories.tsv "$db")
age_days=$(( ($(date +%s) - $(date -d "$date" +%s)) / 86400 ))
echo "deny: using the recorded snapshot of the advisory database: commit $commit of $date ($age_days days old)"
# cargo-deny reads the database's age from its git history: commit it with the snapshot's date.
git -C "$db" init -q
git -C "$db" add -A
GIT_AUTHOR_DATE="$date" GIT_COMMITTER_DATE="$date" \
    git -C "$db" -c user.name=ovl -c user.email=ovl@localhost commit -q -m "advisory facts of $commit"
cargo deny --offline check
