#!/usr/bin/env bash
# A file larger than what one call to a lent device machine may carry (its
# working tree travels in at most 64 MiB; the decoded CIFAR-10 is 176 MiB)
# travels in parts, one part a call, and is joined there once all arrived:
#   launch/carry_parts.sh split FILE DIR [SIZE]   (SIZE as split -b takes it,
#       default 59M: a part and the repository's ~2 MiB fit in 64 MiB)
#     -> DIR/NAME.part_00, _01, ... and DIR/NAME.manifest (parts, sha256)
#   launch/carry_parts.sh join DIR NAME OUT
#     -> OUT, written only when every part is there and the sha256 of their
#        concatenation is the manifest's; otherwise one line saying what is
#        missing or wrong, exit 1, and no OUT.
set -euo pipefail
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2; }

case ${1:-} in
  split)
    (( $# >= 3 )) || usage
    dir=$3 size=${4:-59M} name=$(basename "$2")
    [[ -f $2 ]] || { echo "error: $2 does not exist" >&2; exit 1; }
    mkdir -p "$dir"
    rm -f "$dir/$name".part_* "$dir/$name.manifest"
    split -b "$size" -d -a 2 -- "$2" "$dir/$name.part_"
    parts=$(ls "$dir/$name".part_* | wc -l)
    sum=$(sha256sum -- "$2" | cut -d' ' -f1)
    printf '%s %s\n' "$parts" "$sum" > "$dir/$name.manifest"
    ls -l "$dir/$name".part_* | awk '{print $5, $NF}'
    echo "$parts parts; carry one a call with $dir/$name.manifest, then" \
      "launch/carry_parts.sh join $dir $name OUT"
    ;;
  join)
    (( $# == 4 )) || usage
    dir=$2 name=$3 out=$4
    manifest=$dir/$name.manifest
    [[ -f $manifest ]] || { echo "error: no $manifest: carry it" \
      "with the parts" >&2; exit 1; }
    read -r parts sum < "$manifest"
    files=() missing=()
    for ((i = 0; i < parts; i++)); do
      files+=("$(printf '%s/%s.part_%02d' "$dir" "$name" "$i")")
      [[ -f ${files[i]} ]] || missing+=("${files[i]}")
    done
    if (( ${#missing[@]} )); then
      echo "error: $parts parts expected; missing: ${missing[*]}" >&2
      exit 1
    fi
    tmp=$out.joining
    mkdir -p "$(dirname -- "$out")"
    cat -- "${files[@]}" > "$tmp"
    got=$(sha256sum -- "$tmp" | cut -d' ' -f1)
    if [[ $got != "$sum" ]]; then
      rm -f -- "$tmp"
      echo "error: the $parts joined parts have sha256 $got, the manifest" \
        "says $sum: a part is damaged or from another split" >&2
      exit 1
    fi
    mv -- "$tmp" "$out"
    echo "$out: $parts parts joined, sha256 matches"
    ;;
  *) usage ;;
esac
