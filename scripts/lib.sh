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

# ---------------------------------------------------------------------------
# The Apache Kafka broker the tests run on (see scripts/kafka/pom.xml and
# crates/events/src/testing.rs).

# The Kafka version scripts/kafka/pom.xml names.
tandem_kafka_version() {
	sed -n 's#.*<kafka\.version>\(.*\)</kafka\.version>.*#\1#p' "$(tandem_repo_root)/scripts/kafka/pom.xml" | head -n 1
}

# True if DIR holds the broker's jars for VERSION.
tandem_kafka_libs_ok() {
	[ -f "$1/kafka_2.13-$2.jar" ]
}

# The java the broker runs on: $JAVA_HOME/bin/java, else java on PATH.
tandem_java() {
	if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
		printf '%s\n' "$JAVA_HOME/bin/java"
	else
		printf 'java\n'
	fi
}

# The major version of that java, or nothing.
tandem_java_major() {
	local v
	v=$("$(tandem_java)" -version 2>&1 | sed -n 's/.*version "\([0-9][0-9]*\)[."].*/\1/p' | head -n 1)
	[ "$v" = 1 ] && v=8 # "1.8.0_..."
	printf '%s\n' "$v"
}

# Java 17+ (the broker) and, unless --java-only, Maven (to fetch it);
# installed with apt-get when missing and we are root.
tandem_need_java_and_maven() {
	local major missing=()
	major=$(tandem_java_major 2>/dev/null || true)
	if [ -z "$major" ] || [ "$major" -lt 17 ]; then
		missing+=(default-jre-headless)
	fi
	[ "${1:-}" = --java-only ] || have mvn || missing+=(maven)
	[ "${#missing[@]}" -eq 0 ] && return 0
	if ! is_root || ! have apt-get; then
		die "the Kafka test broker needs Java 17+ and Maven; missing: ${missing[*]}" \
			"install them (Debian: sudo apt-get install ${missing[*]}), then run scripts/test again," \
			"or set TANDEM_TEST_KAFKA_LIBS to a folder with the broker's jars (and JAVA_HOME to a Java 17+)"
	fi
	step "installing ${missing[*]} for the Kafka test broker (apt-get)"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq </dev/null ||
		die "apt-get update failed" "check the network and /etc/apt/sources.list, then run scripts/test again"
	apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null ||
		die "apt-get install ${missing[*]} failed" "install Java 17+ and Maven by hand, then run scripts/test again"
	major=$(tandem_java_major 2>/dev/null || true)
	if [ -z "$major" ] || [ "$major" -lt 17 ]; then
		die "java is still older than 17 (or missing) after the install: $("$(tandem_java)" -version 2>&1 | head -n 1)" \
			"make a Java 17+ the default (update-alternatives --config java) or set JAVA_HOME"
	fi
}

# tandem_setup_kafka: the broker's jars, fetched from Maven Central once into
# ~/.cache/tandem/tools/kafka-VERSION/libs; exports TANDEM_TEST_KAFKA_LIBS.
# Sets KAFKA_HOW to say where they came from.
tandem_setup_kafka() {
	local version dir libs tmp start=$SECONDS
	version=$(tandem_kafka_version)
	[ -n "$version" ] || die "cannot read <kafka.version> from scripts/kafka/pom.xml"
	if [ -n "${TANDEM_TEST_KAFKA_LIBS:-}" ]; then
		if tandem_kafka_libs_ok "$TANDEM_TEST_KAFKA_LIBS" "$version"; then
			KAFKA_HOW="from TANDEM_TEST_KAFKA_LIBS"
			export TANDEM_TEST_KAFKA_LIBS
			tandem_need_java_and_maven --java-only
			return 0
		fi
		warn "TANDEM_TEST_KAFKA_LIBS=$TANDEM_TEST_KAFKA_LIBS has no kafka_2.13-$version.jar; using the tools cache"
	fi
	dir="$HOME/.cache/tandem/tools/kafka-$version"
	libs="$dir/libs"
	if tandem_kafka_libs_ok "$libs" "$version"; then
		KAFKA_HOW="cached"
		export TANDEM_TEST_KAFKA_LIBS=$libs
		tandem_need_java_and_maven --java-only
		return 0
	fi
	tandem_need_java_and_maven
	mkdir -p "$dir"
	# One fetch at a time on this machine; a run that waited finds it done.
	if have flock; then
		exec 8>"$dir/.install.lock"
		flock 8
	fi
	if tandem_kafka_libs_ok "$libs" "$version"; then
		exec 8>&-
		KAFKA_HOW="fetched by a concurrent run"
		export TANDEM_TEST_KAFKA_LIBS=$libs
		return 0
	fi
	step "fetching the Apache Kafka $version broker from Maven Central into $libs (once per machine)"
	tmp=$(mktemp -d "$dir/libs.tmp.XXXXXX")
	if ! mvn -q -B -Dstyle.color=never -f "$(tandem_repo_root)/scripts/kafka/pom.xml" dependency:copy-dependencies \
		-DoutputDirectory="$tmp" </dev/null; then
		rm -rf "$tmp"
		exec 8>&-
		die "mvn dependency:copy-dependencies failed (output above)" \
			"check that Maven Central is reachable (mvn uses ~/.m2/settings.xml) and the disk has room, then run scripts/test again"
	fi
	tandem_kafka_libs_ok "$tmp" "$version" || {
		rm -rf "$tmp"
		exec 8>&-
		die "mvn ran, but kafka_2.13-$version.jar is not among the jars it copied" "check scripts/kafka/pom.xml"
	}
	rm -rf "$libs"
	mv "$tmp" "$libs" # whole or not at all: a half-copied folder never has this name
	exec 8>&-
	KAFKA_HOW="fetched in $(fmt_secs $((SECONDS - start)))"
	export TANDEM_TEST_KAFKA_LIBS=$libs
}
