# Shared by the scripts next to it: sourced (`. scripts/lib.sh`), not run.

# need_root "$0" "$@": go on when already root; else run the whole script
# again as root through sudo, which gives root its own PATH (sudo's
# secure_path), never the caller's, and its own environment but for
# lowport's settings (LOWPORT_*, CI), passed on by name. Without sudo, say
# what to do. Call it before any `cd`, so "$0" still names the script.
need_root() {
    [ "$(id -u)" = 0 ] && return 0
    if ! command -v sudo >/dev/null 2>&1; then
        echo "$1: needs root, and sudo is not installed: run it in a root shell (su -)" >&2
        exit 2
    fi
    for name in $(env | sed -n 's/^\(LOWPORT_[A-Za-z0-9_]*\|CI\)=.*/\1/p'); do
        set -- "$name=$(printenv "$name")" "$@"
    done
    exec sudo -- env "$@"
}

# find_cargo: make `cargo` callable as root without taking anyone's PATH:
# root's own (PATH or ~root/.cargo/bin), else the cargo of the user who
# ran sudo (~$SUDO_USER/.cargo/bin, with that user's rustup toolchains).
find_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        if [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
            PATH="${HOME:-/root}/.cargo/bin:$PATH"
        elif [ -n "${SUDO_USER:-}" ]; then
            user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
            if [ -x "$user_home/.cargo/bin/cargo" ]; then
                PATH="$user_home/.cargo/bin:$PATH"
                # rustup's cargo finds its toolchains here.
                if [ -z "${RUSTUP_HOME:-}" ] && [ -d "$user_home/.rustup" ]; then
                    RUSTUP_HOME="$user_home/.rustup"
                    export RUSTUP_HOME
                fi
            fi
        fi
        export PATH
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo not found in root's PATH, ~root/.cargo/bin or ~\$SUDO_USER/.cargo/bin; install Rust with rustup" >&2
        exit 2
    fi
}
