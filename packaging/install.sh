#!/usr/bin/env bash
# Put Cellar in the desktop's application menu: a .desktop file and the icon under the XDG data dir
# (~/.local/share unless XDG_DATA_HOME says otherwise), pointing at a built bundle.
#
#   packaging/install.sh [BUNDLE_DIR]      default BUNDLE_DIR: dist/cellar next to this script's repo
#   packaging/install.sh --uninstall       remove what install put there
#   --bin DIR                              also link DIR/cellar to the bundle (e.g. --bin ~/.local/bin)
#
# The bundle is not copied: the menu entry runs it where it lies, so move the bundle first and
# install from there (or run install again after moving it).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
data_home="${XDG_DATA_HOME:-$HOME/.local/share}"
apps_dir="$data_home/applications"
icon_dir="$data_home/icons/hicolor/scalable/apps"
desktop_file="$apps_dir/cellar.desktop"
icon_file="$icon_dir/cellar.svg"

bundle=""
bin_dir=""
uninstall=0
while [ $# -gt 0 ]; do
    case "$1" in
        --uninstall) uninstall=1 ;;
        --bin) bin_dir="${2:?--bin needs a folder}"; shift ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "error: unknown option $1 (see $0 --help)" >&2; exit 2 ;;
        *) bundle="$1" ;;
    esac
    shift
done

refresh_caches() {
    if command -v update-desktop-database >/dev/null 2>&1; then
        update-desktop-database -q "$apps_dir" 2>/dev/null || true
    fi
    if command -v gtk-update-icon-cache >/dev/null 2>&1 && [ -f "$data_home/icons/hicolor/index.theme" ]; then
        gtk-update-icon-cache -q -t "$data_home/icons/hicolor" 2>/dev/null || true
    fi
}

if [ "$uninstall" = 1 ]; then
    rm -f "$desktop_file" "$icon_file"
    if [ -n "$bin_dir" ] && [ -L "$bin_dir/cellar" ]; then
        rm -f "$bin_dir/cellar"
    fi
    refresh_caches
    echo "removed $desktop_file and $icon_file"
    exit 0
fi

bundle="${bundle:-$repo/dist/cellar}"
if [ ! -x "$bundle/cellar" ]; then
    echo "error: no bundle at $bundle (expected $bundle/cellar); build it with \`make bundle\`" >&2
    exit 2
fi
bundle="$(cd "$bundle" && pwd)"
exe="$bundle/cellar"
icon_src="$bundle/_internal/resources/icons/cellar.svg"
desktop_src="$bundle/_internal/resources/cellar.desktop"
for f in "$icon_src" "$desktop_src"; do
    if [ ! -f "$f" ]; then
        echo "error: the bundle lacks $f; rebuild it with \`make bundle\`" >&2
        exit 1
    fi
done

mkdir -p "$apps_dir" "$icon_dir"
install -m 644 "$icon_src" "$icon_file"
# The shipped entry runs `cellar` from PATH; this one runs the bundle by its full path, quoted as the
# Desktop Entry spec asks: inside the quotes ", `, $ and \ take a backslash, which the file's string
# escaping doubles again (so \ is written as four), and % is doubled. TryExec is a plain string.
try_exec="$(printf '%s' "$exe" | sed -e 's/\\/\\\\/g')"
exec_arg="$(printf '%s' "$exe" | sed -e 's/\\/\\\\\\\\/g' -e 's/["`$]/\\\\&/g' -e 's/%/%%/g')"
tmp="$(mktemp "$apps_dir/.cellar.desktop.XXXXXX")"
group=""
while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
        \[*\]) group="$line"; printf '%s\n' "$line" ;;
        Exec=cellar*)
            printf 'Exec="%s"%s\n' "$exec_arg" "${line#Exec=cellar}"
            if [ "$group" = "[Desktop Entry]" ]; then printf 'TryExec=%s\n' "$try_exec"; fi ;;
        TryExec=*) ;;
        *) printf '%s\n' "$line" ;;
    esac
done < "$desktop_src" > "$tmp"
chmod 644 "$tmp"
mv "$tmp" "$desktop_file"

if [ -n "$bin_dir" ]; then
    mkdir -p "$bin_dir"
    ln -sfn "$exe" "$bin_dir/cellar"
    echo "linked $bin_dir/cellar -> $exe"
fi
refresh_caches
echo "installed $desktop_file (runs $exe) and $icon_file"
