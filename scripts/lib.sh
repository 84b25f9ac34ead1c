# shellcheck shell=bash
# Shared helpers for scripts/test and .ci/run. Source it; don't run it.

# Progress line: "==> message".
step() { printf '==> %s\n' "$*"; }

# Secondary detail under a step.
note() { printf '    %s\n' "$*"; }

warn() { printf 'warning: %s\n' "$*" >&2; }

# die "what went wrong" ["what to do" ...]: print and exit 1.
die() {
	printf 'error: %s\n' "$1" >&2
	shift
	local line
	for line in "$@"; do
		printf '  -> %s\n' "$line" >&2
	done
	exit 1
}

have() { command -v "$1" >/dev/null 2>&1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# The repository root: the parent of the folder holding this file.
tandem_repo_root() {
	(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
}

# The build cache shared by every clone on this machine.
tandem_export_target_dir() {
	export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tandem/target}"
}

# tcp_open HOST PORT: true if something accepts TCP connections there.
tcp_open() {
	# shellcheck disable=SC2016 # expanded by the inner bash
	timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" >/dev/null 2>&1
}

# Seconds as "1m23s".
fmt_secs() {
	local s=$1
	if [ "$s" -ge 60 ]; then
		printf '%dm%02ds' $((s / 60)) $((s % 60))
	else
		printf '%ds' "$s"
	fi
}
