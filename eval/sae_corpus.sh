#!/usr/bin/env bash
# eval/sae_corpus.sh [OUT_DIR] - assemble the SAE training corpus from Debian's python3.11-doc.
#
# Source: the plain-text (reStructuredText) sources of the Python 3.11 documentation that the
# python3.11-doc package installs next to its HTML (html/_sources/**/*.rst.txt). Markup is
# reduced to prose: directive and comment lines, section underlines, field lists and role
# markup (:func:`x` -> x, ``x`` -> x) are dropped; the changelog (mostly issue numbers) is
# skipped. Documents are ordered by a hash of their path (a fixed shuffle, so that any prefix
# of the corpus samples all parts of the docs) and split by document: every 10th document
# goes to heldout.txt (the figures of train-sae), the rest to train.txt.
#
# None of this text is used to evaluate retrieval (eval/ uses LongBench-format data and
# generated documents). Output: OUT_DIR/train.txt, OUT_DIR/heldout.txt, OUT_DIR/MANIFEST
# (default OUT_DIR: models/sae-corpus). Deterministic: the same package gives the same bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-models/sae-corpus}
src=${S3_PYDOC_SOURCES:-/usr/share/doc/python3.11/html/_sources}
if [ ! -d "$src" ]; then
    echo "sae_corpus: $src not found (install the python3.11-doc package)" >&2
    exit 1
fi
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# fixed shuffle: sort documents by the sha256 of their relative path
(cd "$src" && find . -name '*.rst.txt' ! -path './whatsnew/changelog*' | sed 's|^\./||' |
    while read -r f; do printf '%s %s\n' "$(printf '%s' "$f" | sha256sum | cut -c1-16)" "$f"; done |
    sort | cut -d' ' -f2-) > "$tmp/list"

clean() {
    LC_ALL=C awk '
        /^[[:space:]]*\.\. / { skip = 1; next }                 # directives, comments
        skip && /^[[:space:]]+:[a-z-]+:/ { next }               # directive options
        skip && /^[[:space:]]*$/ { skip = 0; print ""; next }
        /^[=~^"#*+`:._-][=~^"#*+`:._-][=~^"#*+`:._-]+[[:space:]]*$/ { next }  # underlines
        /^[[:space:]]*:[a-zA-Z -]+:[[:space:]]/ { next }         # field lists
        {
            skip = 0
            gsub(/:[a-z:]+:`~?/, "")                            # role prefixes
            gsub(/`+_?/, "")                                    # remaining backquotes
            gsub(/\*\*/, "")
            print
        }' "$1" | cat -s
}

: > "$tmp/train.txt"
: > "$tmp/heldout.txt"
n=0
n_train=0
n_held=0
while read -r f; do
    if [ $((n % 10)) -eq 9 ]; then
        dst=heldout
        n_held=$((n_held + 1))
    else
        dst=train
        n_train=$((n_train + 1))
    fi
    clean "$src/$f" >> "$tmp/$dst.txt"
    printf '\n\n' >> "$tmp/$dst.txt"
    printf '%s %s\n' "$dst" "$f" >> "$tmp/manifest"
    n=$((n + 1))
done < "$tmp/list"

mv "$tmp/train.txt" "$out/train.txt"
mv "$tmp/heldout.txt" "$out/heldout.txt"
mv "$tmp/manifest" "$out/MANIFEST"
echo "sae_corpus: $n documents ($n_train train, $n_held held out) -> $out" \
     "($(wc -c < "$out/train.txt") + $(wc -c < "$out/heldout.txt") bytes)"
