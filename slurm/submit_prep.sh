#!/usr/bin/env bash
# Data preparation on Slurm in one command: list the input's page files once, then the build array, then the merge.
#
#   slurm/submit_prep.sh --array=0-63 [more sbatch options for the array] -- \
#       --input /data/iit-cdip --out /data/shards/train --ocr tesseract --tokenizer /data/vocab
#
# Options before `--` go to the array's sbatch, the arguments after it to build_shards (as for slurm/prep.sbatch).
# Run it from the repository root, like sbatch slurm/prep.sbatch. It submits
#   1. a one-CPU job that walks --input once: python -m data_prep.file_list --input IN --out LIST (LIST: $FILE_LIST,
#      default OUT/file-list.txt; its log LOG_DIR/prep-list-<jobid>.out);
#   2. the array, slurm/prep.sbatch with the build arguments and --file-list LIST, which starts once the list is
#      written (--dependency=afterok; cancelled if the listing fails). Its first task submits the merge, as before.
# So N tasks cost one walk of the tree (minutes at 11 M files on a shared filesystem; before, every task walked
# it), and every task plans the same chunks from the same list: pages added to --input after the list was written
# are not built. With --file-list among the build arguments no list job is submitted: the array reads that list.
# The list job, like the merge job, gets none of the array's options: partition or account come from the cluster's
# defaults or SBATCH_PARTITION / SBATCH_ACCOUNT. Prints the job ids. Environment: PYTHON (default python),
# REPO_DIR (default: the current directory), LOG_DIR (default logs/slurm), FILE_LIST.
set -euo pipefail

REPO_DIR=${REPO_DIR:-$PWD}
PYTHON=${PYTHON:-python}
LOG_DIR=${LOG_DIR:-logs/slurm}
export REPO_DIR PYTHON LOG_DIR

usage="usage: slurm/submit_prep.sh --array=0-N [sbatch options] -- BUILD_SHARDS_ARGUMENTS (--input and --out included)"
sbatch_options=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
    sbatch_options+=("$1")
    shift
done
[ $# -gt 0 ] || { echo "$usage" >&2; exit 2; }
shift  # the --
build=("$@")

value_of() {  # the value of build_shards' option $1 (--name VALUE or --name=VALUE), empty if absent; the last
    local previous="" arg value=""  # one when repeated, as argparse reads it
    for arg in "${build[@]}"; do
        case $arg in
            "$1"=*) value=${arg#"$1"=} ;;
        esac
        [ "$previous" = "$1" ] && value=$arg
        previous=$arg
    done
    printf '%s\n' "$value"
}
sh_quoted() {  # $1 quoted for /bin/sh, which runs sbatch --wrap (bash's %q may write $'...', which dash reads as text)
    printf "'%s'" "${1//\'/\'\\\'\'}"
}
input=$(value_of --input)
out=$(value_of --out)
listing=$(value_of --file-list)
if [ -z "$input" ] || [ -z "$out" ]; then
    echo "$usage" >&2
    exit 2
fi

dependency=()
if [ -z "$listing" ]; then
    listing=${FILE_LIST:-$out/file-list.txt}
    mkdir -p "$LOG_DIR"
    list_command="cd $(sh_quoted "$REPO_DIR") && $(sh_quoted "$PYTHON") -m data_prep.file_list"
    list_command+=" --input $(sh_quoted "$input") --out $(sh_quoted "$listing")"
    list_job=$(sbatch --parsable --job-name=layoutlmv3-prep-list --ntasks=1 --cpus-per-task=1 \
        --output="$LOG_DIR/prep-list-%j.out" --wrap "$list_command")
    list_job=${list_job%%;*}
    echo "list job $list_job writes $listing (one walk of $input; log $LOG_DIR/prep-list-$list_job.out)"
    dependency=(--dependency="afterok:$list_job" --kill-on-invalid-dep=yes)
    build+=(--file-list "$listing")
fi
array_job=$(sbatch --parsable "${dependency[@]}" "${sbatch_options[@]}" \
    "$(dirname "$0")/prep.sbatch" "${build[@]}")
array_job=${array_job%%;*}
echo "array job $array_job builds from $listing${list_job:+ once list job $list_job has succeeded}"
