#!/usr/bin/env bash
# Lands the branch checked out in this worktree onto main, fast-forward only:
# rebase on main, gofmt, build, vet, journal catalog, `go test -race` of the
# packages the branch changed and of every package that imports them (plus
# LAND_TESTS="./tests/x ..." for integration tests that run the binaries),
# then fast-forward main in its own worktree. Run it from a helper's
# worktree with everything committed: `tools/land.sh`.
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin"
die() { echo "land: $*" >&2; exit 1; }

branch=$(git rev-parse --abbrev-ref HEAD)
[ "$branch" != main ] || die "run it from a feature worktree, not main"
[ -z "$(git status --porcelain --untracked-files=no)" ] || die "commit (or stash) your changes first"
main_wt=$(git worktree list --porcelain | awk '/^worktree /{wt=$2} $0=="branch refs/heads/main"{print wt}')
[ -n "$main_wt" ] || die "no worktree has main checked out"

checks() {
	local files
	files=$(git diff --name-only --diff-filter=ACMR main...HEAD -- '*.go')
	if [ -n "$files" ]; then
		local bad
		bad=$(gofmt -l $files)
		[ -z "$bad" ] || die "gofmt needed: $bad"
	fi
	go build ./... || die "build failed"
	go vet ./... || die "vet failed"
	go mod tidy -diff >/dev/null || die "go.mod or go.sum is not tidy: go mod tidy (make lint checks it too)"
	go run ./tools/catalog | cmp -s - packaging/g8os.catalog || die "packaging/g8os.catalog is stale: make catalog"
}

git rebase main || { git rebase --abort; die "rebase on main conflicts: resolve by hand (git rebase main), then land again"; }
checks

# The packages the branch touched, and every package whose build depends on
# one of them.
mod=$(go list -m)
changed=$(git diff --name-only main...HEAD -- '*.go' | xargs -r -n1 dirname | sort -u | sed "s|^|$mod/|; s|/\.$||")
if [ -n "$changed" ]; then
	pkgs=$(go list -f '{{.ImportPath}}{{range .Deps}} {{.}}{{end}}{{range .TestImports}} {{.}}{{end}}{{range .XTestImports}} {{.}}{{end}}' ./... |
		awk -v c="$changed" 'BEGIN{n=split(c,a,"\n"); for(i=1;i<=n;i++) want[a[i]]=1}
			{for(i=1;i<=NF;i++) if($i in want){print $1; break}}')
	echo "land: testing $(echo $pkgs ${LAND_TESTS:-} | wc -w) packages"
	go test -race -count=1 -timeout 15m $pkgs ${LAND_TESTS:-} || die "tests failed"
fi

# Only the fast-forward is serialised; if main moved while the tests ran,
# rebase again and re-check the build before landing.
exec 9>"$(git rev-parse --git-common-dir)/land.lock"
flock 9
if ! git merge-base --is-ancestor main HEAD; then
	git rebase main || { git rebase --abort; die "main moved and the rebase conflicts: resolve by hand, then land again"; }
	checks
fi
git -C "$main_wt" merge --ff-only "$branch" || die "fast-forward of main failed (is $main_wt clean?)"
echo "land: main is now $(git rev-parse --short HEAD) ($branch)"
