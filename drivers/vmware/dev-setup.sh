#!/usr/bin/env bash
# Builds the vcsim launcher (drivers/vmware/vcsim/*.go) offline against Debian's
# govmomi sources and caches it in drivers/vmware/.cache/. Silent when up to date.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache="$here/.cache"
bin="$cache/bin/vdvcsim"
src="$here/vcsim"
stamp="$cache/bin/vdvcsim.sha256"
# The stamp covers every source file of the launcher (names and contents), so adding or
# changing one rebuilds it in a fresh clone and in an existing checkout alike.
want=$( (cd "$src" && sha256sum -- *.go; dpkg-query -W -f='${Version}' golang-github-vmware-govmomi-dev golang-go 2>/dev/null) | sha256sum | cut -c1-16)
if [ -x "$bin" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
command -v go >/dev/null || [ -x /usr/lib/go/bin/go ] || { echo "vmware: golang-go is not installed" >&2; exit 1; }
go=$(command -v go || echo /usr/lib/go/bin/go)
mkdir -p "$cache/gopath/src/virtdrivers/vdvcsim" "$cache/gocache" "$cache/bin"
rm -f "$cache/gopath/src/virtdrivers/vdvcsim/"*.go
cp "$src"/*.go "$cache/gopath/src/virtdrivers/vdvcsim/"
version=$(dpkg-query -W -f='${Version}' golang-github-vmware-govmomi-dev 2>/dev/null | sed 's/-[^-]*$//' || true)
echo "vmware: building the vcsim launcher (once, about 15 s)" >&2
(
    cd "$cache/gopath/src/virtdrivers/vdvcsim"
    GO111MODULE=off GOFLAGS= GOPATH="$cache/gopath:/usr/share/gocode" GOCACHE="$cache/gocache" \
        "$go" build -ldflags "-X main.govmomiVersion=${version:-unknown}" -o "$bin.tmp" .
)
mv "$bin.tmp" "$bin"
echo "$want" >"$stamp"
