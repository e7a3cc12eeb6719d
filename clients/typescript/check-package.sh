#!/usr/bin/env bash
# The typed client as another project gets it: `npm pack` here (which builds dist/ first), the
# tarball installed in a scratch consumer project, and files that import it the way
# docs/browser.md shows compiled there with a strict tsc that checks the package's declarations
# (skipLibCheck off). A typed call must compile; a wrong path, a misspelt response field and a
# string id must not. Prints one line per check and exits non-zero when any expectation fails.
# Needs `npm ci` in clients/typescript first: it reuses that tsc rather than download another.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(git -C "$here" rev-parse --show-toplevel 2>/dev/null || (cd "$here/../.." && pwd))
scratch=$root/target/client-check-scratch
tsc=$here/node_modules/.bin/tsc
[ -x "$tsc" ] || { echo "no $tsc: run npm ci in clients/typescript first" >&2; exit 1; }

rm -rf "$scratch"
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/pack" "$scratch/consumer"

failures=0
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
details() { sed -n '1,8s/^/    /p' "$1"; } # the start of a log, indented under its FAIL line

# Pack: the prepare script builds dist/, so the tarball holds the declarations tsc emits and
# the hand-written src/schema.d.ts the build copies beside them.
if ! (cd "$here" && npm pack --pack-destination "$scratch/pack" --loglevel=error) >"$scratch/pack.log" 2>&1; then
    cat "$scratch/pack.log" >&2
    echo "FAIL npm pack in clients/typescript"
    exit 1
fi
tarball=$(find "$scratch/pack" -name 'vehicle-state-client-*.tgz' | head -n 1)
[ -n "$tarball" ] || { cat "$scratch/pack.log" >&2; echo "FAIL npm pack made no tarball"; exit 1; }
contents=$(tar -tzf "$tarball" | sed 's|^package/||' | sort | paste -sd ' ' -)
expected="dist/src/index.d.ts dist/src/index.js dist/src/schema.d.ts package.json"
if [ "$contents" = "$expected" ]; then
    pass "npm pack: $(basename "$tarball") holds $expected"
else
    fail "npm pack: $(basename "$tarball") holds $contents, not $expected"
fi

# The consumer: an ES module project with its own package.json, the tarball installed in it.
cd "$scratch/consumer"
cat >package.json <<'EOF'
{
  "name": "client-check-consumer",
  "version": "0.0.0",
  "private": true,
  "type": "module"
}
EOF
if npm install --no-audit --no-fund --prefer-offline --loglevel=error "$tarball" >"$scratch/install.log" 2>&1; then
    pass "npm install of the tarball in a scratch project"
else
    cat "$scratch/install.log" >&2
    echo "FAIL npm install of the tarball in a scratch project"
    exit 1
fi

cat >tsconfig.base.json <<'EOF'
{
  "compilerOptions": {
    "target": "ES2022",
    "module": "NodeNext",
    "moduleResolution": "NodeNext",
    "lib": ["ES2022", "DOM"],
    "types": [],
    "strict": true,
    "skipLibCheck": false,
    "outDir": "out"
  }
}
EOF

# Each check is one file and a tsconfig that compiles only it.
compile() { # file, extra compilerOptions (JSON members, may be empty), tsc arguments...
    local file=$1 extra=$2; shift 2
    local config=tsconfig.${file%.ts}.json
    printf '{ "extends": "./tsconfig.base.json", "compilerOptions": { %s }, "files": ["%s"] }\n' \
        "$extra" "$file" >"$config"
    "$tsc" -p "$config" --pretty false "$@" >"${file%.ts}.log" 2>&1
}

# (a) The import and call of docs/browser.md compile, and the compiled file loads the package.
cat >good.ts <<'EOF'
import { createVehicleStateClient, type Problem, type StateAnswer } from "vehicle-state-client";

const api = createVehicleStateClient("https://api.example.com");

export async function lookup(): Promise<StateAnswer | Problem> {
  const { data, error, response } = await api.GET("/vehicles/{id}/timestamp/{ts}", {
    params: { path: { id: 3, ts: "2022-09-12T10:00:00Z" } },
  });
  if (data) {
    const state: string = data.state;
    console.log(state, response.headers.get("X-Cache"));
    return data;
  }
  console.log(error.type, error.detail);
  return error;
}

console.log(typeof api.GET);
EOF
if compile good.ts ''; then
    if [ "$(node out/good.js 2>&1)" = function ]; then
        pass "a typed call as docs/browser.md writes it compiles (NodeNext, strict, skipLibCheck off) and runs under node"
    else
        fail "a typed call compiles, but node out/good.js does not load the package"
        node out/good.js >run.log 2>&1 || true
        details run.log
    fi
else
    fail "a typed call as docs/browser.md writes it does not compile"
    details good.log
fi

# The same file under the resolution a bundler (Vite, webpack) project uses.
if compile good.ts '"module": "ESNext", "moduleResolution": "Bundler", "noEmit": true'; then
    pass "the same call compiles with moduleResolution Bundler"
else
    fail "the same call does not compile with moduleResolution Bundler"
    details good.log
fi

# A file that must not compile, and the error tsc must name for it.
expect_error() { # file, what it tests, a string tsc's output must contain
    local file=$1 what=$2 expect=$3
    if compile "$file" '' --noEmit; then
        fail "$what compiles"
    elif grep -q "error TS" "${file%.ts}.log" && grep -qF -- "$expect" "${file%.ts}.log"; then
        pass "$what fails to compile: $(grep -m 1 -o 'error TS.*' "${file%.ts}.log" | cut -c 1-160)"
    else
        fail "$what fails to compile, but not with an error naming $expect"
        details "${file%.ts}.log"
    fi
}

# (b) A path the API does not have.
cat >wrong-path.ts <<'EOF'
import { createVehicleStateClient } from "vehicle-state-client";

const api = createVehicleStateClient("https://api.example.com");
await api.GET("/vehicles/{id}/timestamps/{ts}", {
  params: { path: { id: 3, ts: "2022-09-12T10:00:00Z" } },
});
EOF
expect_error wrong-path.ts 'a wrong path ("/vehicles/{id}/timestamps/{ts}")' '"/vehicles/{id}/timestamps/{ts}"'

# (c) A response field that is not there.
cat >misspelt-field.ts <<'EOF'
import { createVehicleStateClient } from "vehicle-state-client";

const api = createVehicleStateClient("https://api.example.com");
const { data } = await api.GET("/vehicles/{id}/timestamp/{ts}", {
  params: { path: { id: 3, ts: "2022-09-12T10:00:00Z" } },
});
if (data) console.log(data.stat);
EOF
expect_error misspelt-field.ts 'a misspelt response field (data.stat)' "'stat'"

# (d) A vehicle id given as a string.
cat >string-id.ts <<'EOF'
import { createVehicleStateClient } from "vehicle-state-client";

const api = createVehicleStateClient("https://api.example.com");
await api.GET("/vehicles/{id}/timestamp/{ts}", {
  params: { path: { id: "3", ts: "2022-09-12T10:00:00Z" } },
});
EOF
expect_error string-id.ts 'a string vehicle id (id: "3")' "'string'"

if [ "$failures" -gt 0 ]; then
    echo "clients/typescript/check-package.sh: $failures check(s) failed" >&2
    exit 1
fi
