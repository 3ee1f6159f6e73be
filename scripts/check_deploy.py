"""The checks of scripts/check-deploy.sh that need Python (YAML, TOML,
JSON Schema): the Containerfile read instruction by instruction, the
Kubernetes manifests against each other, the config and the Containerfile,
and the ConfigMap's config run by a real `twill` (`run`, `probe`). Each
check prints one PASS/FAIL/SKIP/NOTE line; check-deploy.sh tallies them.

    check_deploy.py static | run ... | probe ...     (run from the repo root)
"""
import glob, json, os, re, socket, subprocess, sys, time, tomllib
import urllib.error, urllib.request

ROOT = os.getcwd()
K8S = "deploy/kubernetes"


def out(kind, msg):
    print(f"{kind} {msg}", flush=True)


def check(ok, msg, why=""):
    out("PASS" if ok else "FAIL", msg if ok or not why else f"{msg}: {why}")
    return ok


# --- the Containerfile -----------------------------------------------------

def containerfile_instructions(path):
    """(line number, INSTRUCTION, rest) with continuations joined and comments dropped."""
    result, buf, start = [], "", None
    for n, raw in enumerate(open(path, encoding="utf-8"), 1):
        line = raw.rstrip("\n")
        if line.strip().startswith("#"):
            continue
        if not line.strip() and not buf:
            continue
        if start is None:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        result.append((start, word.upper(), rest.strip()))
        buf, start = "", None
    return result


def split_flags(rest):
    """COPY/RUN flags (--x=y) and the remaining words (JSON form too)."""
    flags, words = {}, []
    if rest.startswith("["):
        return flags, json.loads(rest)
    for tok in rest.split():
        if not words and tok.startswith("--"):
            k, _, v = tok[2:].partition("=")
            flags.setdefault(k, []).append(v)
        else:
            words.append(tok)
    return flags, words


def parse_containerfile(path):
    args, stages = {}, []
    for n, ins, rest in containerfile_instructions(path):
        if ins == "ARG" and not stages:
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip().strip('"')
            continue
        if ins == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append({"line": n, "image": image, "raw_image": parts[0], "name": name, "ins": []})
            continue
        stages[-1]["ins"].append((n, ins, rest))
    return args, stages


class Ignore:
    """.containerignore with Docker's rules: the last matching pattern wins,
    `!` re-includes, a pattern matching a parent directory matches."""

    def __init__(self, path):
        self.pats = []
        if os.path.exists(path):
            for line in open(path, encoding="utf-8"):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                neg = line.startswith("!")
                p = os.path.normpath(line.lstrip("!").lstrip("/"))
                self.pats.append((neg, re.compile(self._regex(p))))

    @staticmethod
    def _regex(p):
        r, i = "", 0
        while i < len(p):
            c = p[i]
            if p.startswith("**", i):
                i += 2
                if p.startswith("/", i):
                    i += 1
                    r += "(?:.*/)?"
                else:
                    r += ".*"
                continue
            r += "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
            i += 1
        return "^" + r + "$"

    def excluded(self, rel):
        parts = os.path.normpath(rel).split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        ex = False
        for neg, rx in self.pats:
            if any(rx.match(p) for p in prefixes):
                ex = not neg
        return ex


def committed(rel):
    r = subprocess.run(["git", "ls-files", "--error-unmatch", "--", rel], cwd=ROOT,
                       capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip() != ""


def covered(path, sources):
    path = os.path.normpath(path)
    return any(path == s or path.startswith(s + "/") for s in (os.path.normpath(x) for x in sources))


def host_external_inputs():
    """Files outside host/ that host/src compiles in: include_str!/include_bytes!
    (relative to the file) and bindgen!'s `path:` (relative to host/)."""
    found = set()
    for rs in glob.glob("host/src/**/*.rs", recursive=True):
        text = open(rs, encoding="utf-8").read()
        for m in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"\s*\)', text):
            found.add(os.path.normpath(os.path.join(os.path.dirname(rs), m.group(1))))
        if "bindgen!" in text:
            for m in re.finditer(r'\bpath:\s*"([^"]+)"', text):
                found.add(os.path.normpath(os.path.join("host", m.group(1))))
    return sorted(p for p in found if not p.startswith("host/"))


def check_containerfile(cf="Containerfile"):
    """Returns the final stage's facts for the cross-checks."""
    facts = {"components": {}, "env": {}, "expose": set(), "user": None, "config": None}
    if not check(os.path.exists(cf), "Containerfile exists"):
        return facts
    args, stages = parse_containerfile(cf)
    ignore = Ignore(".containerignore")
    check(os.path.exists(".containerignore"), ".containerignore exists")
    names = []
    for st in stages:
        img = st["image"]
        tag = img.rsplit("/", 1)[-1]
        pinned = "@sha256:" in img or (":" in tag and not tag.endswith(":latest"))
        check(pinned and "$" not in img, f"Containerfile:{st['line']}: base image {img} is pinned to a tag or digest")
        for n, ins, rest in st["ins"]:
            if ins not in ("COPY", "ADD"):
                continue
            flags, words = split_flags(rest)
            srcs = words[:-1]
            if "from" in flags:
                src_stage = flags["from"][0]
                check(src_stage in names, f"Containerfile:{n}: COPY --from={src_stage} names an earlier stage")
                continue
            for s in srcs:
                matches = glob.glob(s) if any(c in s for c in "*?[") else ([s] if os.path.exists(s) else [])
                if not check(bool(matches), f"Containerfile:{n}: COPY source {s} exists"):
                    continue
                for mth in matches:
                    # A file must be in git: a clean clone (CI's, a user's) has only those.
                    problems = [why for bad, why in (
                        (ignore.excluded(mth), "excluded by .containerignore"),
                        (os.path.isfile(mth) and not committed(mth), "not tracked by git (commit it)"),
                    ) if bad]
                    check(not problems, f"Containerfile:{n}: COPY source {mth} is in the build context", ", ".join(problems))
        names.append(st["name"])
    if not check(len(stages) >= 2, "Containerfile is multi-stage (a build stage and a runtime stage)"):
        return facts
    build, final = stages[0], stages[-1]

    # The build stage: what `cargo build -p twill` needs.
    build_sources = []
    run_text = ""
    for n, ins, rest in build["ins"]:
        if ins == "COPY":
            flags, words = split_flags(rest)
            if "from" not in flags:
                build_sources += words[:-1]
        if ins == "RUN":
            run_text += rest + "\n"
    pkg = tomllib.load(open("host/Cargo.toml", "rb"))["package"]["name"]
    m = re.search(r"cargo build\b[^\n&;]*", run_text)
    cmd = m.group(0) if m else ""
    check(bool(m) and re.search(rf"(-p|--package)[ =]{re.escape(pkg)}\b", cmd) is not None,
          f"build stage runs `cargo build -p {pkg}` (host/Cargo.toml's package)", f"found: {cmd or 'no cargo build'}")
    check("--release" in cmd and "--locked" in cmd, "build stage builds --release --locked (Cargo.lock as committed)")
    ws = tomllib.load(open("Cargo.toml", "rb"))["workspace"]
    for need in ["Cargo.toml", "Cargo.lock"] + ws.get("members", []):
        check(covered(need, build_sources), f"build stage copies {need} (the workspace)")
    for need in host_external_inputs():
        check(covered(need, build_sources), f"build stage copies {need} (compiled into the host from outside host/)")

    # The runtime stage.
    for n, ins, rest in final["ins"]:
        if ins == "USER":
            facts["user"] = rest
        elif ins == "ENV":
            for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', rest):
                facts["env"][k] = v.strip('"')
        elif ins == "EXPOSE":
            for p in rest.split():
                facts["expose"].add(int(p.split("/")[0]))
        elif ins == "ENTRYPOINT":
            facts["entrypoint"] = rest
        elif ins == "STOPSIGNAL":
            facts["stopsignal"] = rest
        elif ins == "COPY":
            flags, words = split_flags(rest)
            if "from" in flags:
                facts.setdefault("from_build", []).extend(words[:-1])
                continue
            srcs, dest = words[:-1], words[-1]
            for s in srcs:
                target = dest + os.path.basename(s) if dest.endswith("/") else dest
                if s.endswith(".wasm"):
                    facts["components"][target] = s
                if target.endswith("plugins.toml"):
                    facts["config"] = (s, target)
    user = facts["user"] or ""
    uid = user.split(":")[0]
    check(uid.isdigit() and int(uid) != 0, f"runtime stage's USER is a numeric non-root uid ({user or 'none'})")
    ep = facts.get("entrypoint", "")
    try:
        ep_words = json.loads(ep)
    except ValueError:
        ep_words = None
    check(isinstance(ep_words, list) and ep_words[:2] == ["twill", "run"],
          "runtime stage's ENTRYPOINT is exec form `twill run CONFIG`", f"found {ep or 'none'}")
    facts["entrypoint_config"] = ep_words[2] if isinstance(ep_words, list) and len(ep_words) > 2 else None
    check(facts.get("stopsignal") == "SIGTERM", "runtime stage's STOPSIGNAL is SIGTERM (a graceful drain)")
    check(bool(facts["expose"]), f"runtime stage EXPOSEs ports ({sorted(facts['expose'])})")
    cache = facts["env"].get("XDG_CACHE_HOME")
    check(bool(cache) and bool(facts["env"].get("HOME")),
          "runtime stage sets HOME and XDG_CACHE_HOME (wasmtime's compile cache is off without a HOME)")
    cfg = facts["config"]
    check(cfg is not None and cfg[1] == facts["entrypoint_config"],
          "runtime stage copies a plugins.toml to the ENTRYPOINT's config path"
          + (f" ({cfg[0]} -> {cfg[1]})" if cfg else ""))
    return facts


# --- the manifests ----------------------------------------------------------

def load_manifests():
    import yaml
    docs = {}
    for f in sorted(glob.glob(f"{K8S}/*.yaml")):
        try:
            items = [d for d in yaml.safe_load_all(open(f, encoding="utf-8")) if d is not None]
        except yaml.YAMLError as e:
            check(False, f"{f} is well-formed YAML", str(e).replace("\n", " "))
            continue
        good = []
        for i, d in enumerate(items):
            typed = isinstance(d, dict) and all(isinstance(d.get(k), str) for k in ("apiVersion", "kind"))
            named = typed and (d["kind"] == "Kustomization" or isinstance((d.get("metadata") or {}).get("name"), str))
            if check(named, f"{f} document {i}: apiVersion, kind and metadata.name", repr(d)[:80]):
                good.append(d)
        docs[f] = good
    return docs


def by_kind(docs, kind):
    return [(f, d) for f, items in docs.items() for d in items if d.get("kind") == kind]


def port_ok(p):
    return isinstance(p, int) and 1 <= p <= 65535


DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check_gateway_api(docs):
    """Gateway (v1) and TCPRoute (v1, or v1alpha2 before Gateway API v1.6): the
    fields their CRDs require, and that the references resolve. Not a full
    schema validation: see GATEWAY_API_CRDS."""
    gws = by_kind(docs, "Gateway")
    routes = by_kind(docs, "TCPRoute")
    services = {d["metadata"]["name"]: d for _, d in by_kind(docs, "Service")}
    listeners = {}
    for f, g in gws:
        name = g["metadata"]["name"]
        where = f"{f}: Gateway {name}"
        check(g["apiVersion"] in ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"),
              f"{where}: apiVersion is a served Gateway version", g["apiVersion"])
        spec = g.get("spec") or {}
        check(isinstance(spec.get("gatewayClassName"), str) and spec["gatewayClassName"] != "",
              f"{where}: spec.gatewayClassName is set")
        ls = spec.get("listeners")
        if not check(isinstance(ls, list) and 1 <= len(ls) <= 64, f"{where}: spec.listeners has 1 to 64 entries"):
            continue
        seen = set()
        for l in ls:
            ln = l.get("name")
            check(isinstance(ln, str) and DNS_LABEL.match(ln or "") and ln not in seen,
                  f"{where}: listener {ln!r} has a unique DNS-label name")
            seen.add(ln)
            check(port_ok(l.get("port")), f"{where}: listener {ln} has a port 1-65535")
            check(l.get("protocol") == "TCP", f"{where}: listener {ln} protocol is TCP", str(l.get("protocol")))
            kinds = [k.get("kind") for k in ((l.get("allowedRoutes") or {}).get("kinds") or [])]
            check(not kinds or "TCPRoute" in kinds, f"{where}: listener {ln} allows TCPRoutes")
            listeners[(name, ln)] = l
    for f, r in routes:
        name = r["metadata"]["name"]
        where = f"{f}: TCPRoute {name}"
        v = r["apiVersion"]
        check(v in ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1alpha2"),
              f"{where}: apiVersion is gateway.networking.k8s.io/v1 (or v1alpha2)", v)
        spec = r.get("spec") or {}
        prs = spec.get("parentRefs") or []
        check(len(prs) >= 1, f"{where}: spec.parentRefs names a Gateway")
        for pr in prs:
            ok = isinstance(pr.get("name"), str)
            key = (pr.get("name"), pr.get("sectionName"))
            if pr.get("sectionName"):
                ok &= key in listeners
            else:
                ok &= any(k[0] == pr.get("name") for k in listeners)
            check(ok, f"{where}: parentRef {pr.get('name')}/{pr.get('sectionName')} is a Gateway listener in these files")
        rules = spec.get("rules")
        maxr = 1 if v.endswith("/v1") else 16
        if not check(isinstance(rules, list) and 1 <= len(rules) <= maxr, f"{where}: spec.rules has 1 to {maxr} rule(s)"):
            continue
        for rule in rules:
            brs = rule.get("backendRefs") or []
            check(1 <= len(brs) <= 16, f"{where}: each rule has 1 to 16 backendRefs")
            for br in brs:
                svc = services.get(br.get("name"))
                ports = [p.get("port") for p in ((svc or {}).get("spec") or {}).get("ports", [])]
                check(br.get("kind", "Service") == "Service" and svc is not None and br.get("port") in ports,
                      f"{where}: backendRef {br.get('name')}:{br.get('port')} is a port of a Service in these files")


def strictify(schema):
    """CRD schemas allow unknown fields unless told; reject them, as
    `kubectl apply --validate=strict` does."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        for v in schema.values():
            strictify(v)
    elif isinstance(schema, list):
        for v in schema:
            strictify(v)
    return schema


def check_against_crds(docs, crd_dir):
    import jsonschema, yaml
    schemas = {}
    for f in glob.glob(os.path.join(crd_dir, "*.yaml")):
        for crd in yaml.safe_load_all(open(f, encoding="utf-8")):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                s = v["schema"]["openAPIV3Schema"]
                s["properties"]["metadata"] = {"type": "object"}
                schemas[(f"{group}/{v['name']}", kind)] = (v.get("served", False), strictify(s), f)
    for f, items in docs.items():
        for d in items:
            if d.get("kind") not in ("Gateway", "TCPRoute"):
                continue
            key = (d["apiVersion"], d["kind"])
            what = f"{f}: {d['kind']} {d['metadata']['name']} against the CRD in {crd_dir}"
            if key not in schemas:
                check(False, what, f"no CRD serves {key[0]} {key[1]}")
                continue
            served, schema, _ = schemas[key]
            if not check(served, f"{what}: {key[0]} is served"):
                continue
            errs = sorted(jsonschema.Draft202012Validator(schema).iter_errors(d), key=lambda e: list(e.path))
            check(not errs, what, "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errs[:5]))


def duration_s(s):
    m = re.fullmatch(r"\s*([0-9.]+)\s*(us|ms|s|m|h)\s*", s)
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def check_cross(docs, facts):
    deps = by_kind(docs, "Deployment")
    if not check(len(deps) == 1, "one Deployment"):
        return
    f, dep = deps[0]
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"].get("labels", {})
    check(all(labels.get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items()),
          "Deployment's selector matches its pod labels")
    c = pod["containers"][0]
    facts["args"] = c.get("args", [])
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    for sf, svc in by_kind(docs, "Service"):
        sel = svc["spec"].get("selector", {})
        check(sel and all(labels.get(k) == v for k, v in sel.items()), f"{sf}: Service selects the pods")
        for p in svc["spec"]["ports"]:
            t = p.get("targetPort", p["port"])
            check(t in ports or t in ports.values(), f"{sf}: Service port {p['port']} targets a container port ({t})")
    for pf, pdb in by_kind(docs, "PodDisruptionBudget"):
        sel = pdb["spec"]["selector"]["matchLabels"]
        check(all(labels.get(k) == v for k, v in sel.items()), f"{pf}: PodDisruptionBudget selects the pods")

    # The config: the ConfigMap mounted at the ENTRYPOINT's config directory.
    cms = {d["metadata"]["name"]: (cf, d) for cf, d in by_kind(docs, "ConfigMap")}
    cfg_path = facts.get("entrypoint_config") or "/etc/twill/plugins.toml"
    cfg_dir, cfg_key = os.path.dirname(cfg_path), os.path.basename(cfg_path)
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    m = mounts.get(cfg_dir)
    cm_name = (vols.get(m["name"], {}).get("configMap") or {}).get("name") if m else None
    if not check(cm_name in cms, f"{f}: a ConfigMap in these files is mounted at {cfg_dir} (the ENTRYPOINT's config)",
                 f"mounted: {cm_name}"):
        return
    cf, cm = cms[cm_name]
    text = (cm.get("data") or {}).get(cfg_key)
    if not check(isinstance(text, str), f"{cf}: data has {cfg_key}"):
        return
    open(os.path.join(os.environ["WORK"], "configmap-plugins.toml"), "w").write(text)
    image_cfg = facts.get("config")
    if image_cfg:
        ours = open(image_cfg[0], encoding="utf-8").read()
        if not check(ours == text, f"{cf}'s {cfg_key} is the image's default config ({image_cfg[0]})",
                     "they differ; make them the same (the diff below)"):
            import difflib
            sys.stdout.writelines(difflib.unified_diff(ours.splitlines(True), text.splitlines(True),
                                                       image_cfg[0], f"{cf} data.{cfg_key}"))
    try:
        conf = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        check(False, f"{cf}: {cfg_key} is TOML", str(e))
        return
    host = conf.get("host", {})
    metrics = host.get("metrics")
    mport = None
    if check(isinstance(metrics, str), f"{cfg_key}: [host] metrics is set (the probes need /healthz and /readyz)"):
        addr, _, mport = metrics.rpartition(":")
        mport = int(mport)
        facts["metrics_port"] = mport
        check(addr.strip("[]") in ("0.0.0.0", "::"), f"{cfg_key}: [host] metrics binds every interface ({metrics}), so the kubelet reaches it")
    facts["listen_port"] = (conf.get("listen") or [{}])[0].get("port")
    facts["metrics_port"] = mport
    for i, l in enumerate(conf.get("listen", [])):
        iface = l.get("interface", "127.0.0.1")
        check(iface in ("0.0.0.0", "::"), f"{cfg_key}: listen[{i}] binds every interface (interface = {iface!r})")
        check(l.get("port") in ports.values(), f"{f}: listen[{i}]'s port {l.get('port')} is a containerPort")
        check(l.get("port") in facts["expose"], f"Containerfile EXPOSEs listen[{i}]'s port {l.get('port')}")
    if mport is not None:
        check(mport in ports.values(), f"{f}: the metrics port {mport} is a containerPort")
        check(mport in facts["expose"], f"Containerfile EXPOSEs the metrics port {mport}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", None)):
        p = (c.get(probe) or {}).get("httpGet")
        if p is None and probe == "startupProbe":
            continue
        pp = p and (ports.get(p["port"]) if isinstance(p["port"], str) else p["port"])
        check(p is not None and pp == mport and (path is None or p["path"] == path)
              and p["path"] in ("/healthz", "/readyz"),
              f"{f}: {probe} is httpGet {path or '/healthz'} on the metrics port", str(p))
    # Components: each one the config names is in the image.
    comps = {}
    for name, pl in conf.get("plugins", {}).items():
        comp = pl.get("component", "")
        if check(comp in facts["components"], f"{cfg_key}: plugins.{name}.component {comp} is copied into the image"):
            comps[comp] = facts["components"][comp]
    json.dump(comps, open(os.path.join(os.environ["WORK"], "components.json"), "w"))

    # Shutdown: the grace period covers the preStop sleep and the drain.
    grace = pod.get("terminationGracePeriodSeconds", 30)
    pre = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
    drain = duration_s(host.get("shutdown-timeout", "5s"))
    check(grace > pre + drain, f"{f}: terminationGracePeriodSeconds ({grace}) > preStop sleep ({pre}) + shutdown-timeout ({drain:g}s)")

    # Security: the restricted Pod Security Standard, and the image's user.
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True or csc.get("runAsNonRoot") is True, f"{f}: runAsNonRoot")
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    image_uid = (facts.get("user") or "").split(":")[0]
    check(uid is None or str(uid) == image_uid, f"{f}: runAsUser ({uid}) is the image's USER ({image_uid})")
    check(csc.get("allowPrivilegeEscalation") is False, f"{f}: allowPrivilegeEscalation: false")
    check(csc.get("readOnlyRootFilesystem") is True, f"{f}: readOnlyRootFilesystem: true")
    check("ALL" in ((csc.get("capabilities") or {}).get("drop") or []), f"{f}: capabilities drop ALL")
    seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    check(seccomp in ("RuntimeDefault", "Localhost"), f"{f}: seccompProfile {seccomp}")
    cache = facts["env"].get("XDG_CACHE_HOME")
    cm_ = mounts.get(cache)
    check(cm_ is not None and not cm_.get("readOnly") and "emptyDir" in vols.get(cm_["name"], {}),
          f"{f}: an emptyDir is mounted writable at the image's XDG_CACHE_HOME ({cache}) under the read-only root")
    res = c.get("resources", {})
    check(all(k in res.get(s, {}) for s in ("requests", "limits") for k in ("cpu", "memory")),
          f"{f}: cpu and memory requests and limits are set")

    # kustomization: its resources exist; its image entry is the Deployment's image.
    for kf, k in [(kf, d) for kf, items in docs.items() for d in items if d.get("kind") == "Kustomization"]:
        for r in k.get("resources", []):
            check(os.path.isfile(os.path.join(K8S, r)), f"{kf}: resource {r} exists")
        image = c["image"].split("@")[0].rsplit(":", 1)[0] if ":" in c["image"].split("/")[-1] else c["image"]
        for im in k.get("images", []):
            check(im.get("name") == image, f"{kf}: images[{im.get('name')}] is the Deployment's image ({image})")


def cmd_static():
    facts = check_containerfile()
    docs = load_manifests()
    out("NOTE", "Gateway and TCPRoute: kubernetes-validate has no schemas for them (it warns and passes);"
        " checked here for their CRDs' required fields and for references that resolve, not against the full schema")
    check_gateway_api(docs)
    crds = os.environ.get("GATEWAY_API_CRDS")
    if crds:
        check_against_crds(docs, crds)
    else:
        out("SKIP", "Gateway/TCPRoute against the Gateway API CRDs' schemas (set GATEWAY_API_CRDS to a directory of them)")
    check_cross(docs, facts)
    # For the podman step: what the final stage takes from the build stage.
    json.dump({"from_build": facts.get("from_build", []), "env": facts["env"], "user": facts["user"],
               "args": facts.get("args", []), "ports": [facts.get("listen_port"), facts.get("metrics_port")]},
              open(os.path.join(os.environ["WORK"], "image.json"), "w"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def http(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError as e:
        return None, str(e)


def wait_ready(port, seconds, alive=lambda: True):
    deadline = time.time() + seconds
    while time.time() < deadline and alive():
        status, _ = http(port, "/readyz")
        if status == 200:
            return True
        time.sleep(0.1)
    return False


def echo(port, keep=False):
    """One line echoed; with keep, the still open connection (else None)."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"check-deploy\n")
        got = b""
        while len(got) < 13:
            chunk = s.recv(64)
            if not chunk:
                break
            got += chunk
    except OSError:
        return None
    if got != b"check-deploy\n":
        s.close()
        return None
    if keep:
        return s
    s.close()
    return True


def cmd_run(twill, cfg):
    """Serves the config on loopback ports and probes it as the kubelet would."""
    text = open(cfg).read()
    port, mport = free_port(), free_port()
    text = re.sub(r'(?m)^metrics\s*=\s*"[^"]*"', f'metrics = "127.0.0.1:{mport}"', text)
    text = re.sub(r'(?m)^interface\s*=\s*"[^"]*"', 'interface = "127.0.0.1"', text)
    conf = tomllib.loads(text)
    if len(conf.get("listen", [])) != 1:
        out("SKIP", "twill run: the probe knows one [[listen]] entry only")
        return
    text = re.sub(r'(?m)^port\s*=\s*\d+', f"port = {port}", text, count=1)
    run_cfg = cfg.replace(".toml", "-run.toml")
    open(run_cfg, "w").write(text)
    env = dict(os.environ, NO_COLOR="1", XDG_CACHE_HOME=os.path.join(os.path.dirname(cfg), "cache"))
    log = open(cfg + ".log", "w")
    p = subprocess.Popen([twill, "run", run_cfg], stdout=log, stderr=subprocess.STDOUT, env=env)
    idle = None
    try:
        ready = check(wait_ready(mport, 20, lambda: p.poll() is None), "twill run: /readyz answers 200 within 20 s")
        if ready:
            check(http(mport, "/healthz")[0] == 200, "twill run: /healthz answers 200")
            idle = echo(port, keep=True)
            check(idle is not None, "twill run: the [[listen]] entry echoes")
        t0 = time.time()
        p.terminate()
        drain = duration_s(conf.get("host", {}).get("shutdown-timeout", "5s"))
        if idle is not None:
            # The drain: an open connection is closed cleanly (a FIN), not reset.
            idle.settimeout(drain + 5)
            try:
                end = "a clean close" if idle.recv(64) == b"" else "more data"
            except OSError as e:
                end = f"{e}"
            idle.close()
            check(end == "a clean close", "twill run: on SIGTERM an open connection ends with a clean close", end)
        try:
            rc = p.wait(drain + 5)
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 0, f"twill run: SIGTERM ends it with exit 0 (exit {rc}, {time.time() - t0:.2f} s)")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        log.close()
    if p.returncode != 0:
        print(open(cfg + ".log").read()[-3000:])


def cmd_probe(port, mport, seconds):
    """The podman run: the published ports answer as deployment.yaml expects."""
    port, mport = int(port), int(mport)
    if not check(wait_ready(mport, float(seconds)), f"container: /readyz answers 200 within {seconds} s"):
        return
    check(http(mport, "/healthz")[0] == 200, "container: /healthz answers 200")
    check(echo(port) is True, "container: the [[listen]] entry echoes through its published port (it binds 0.0.0.0 inside)")
    status, body = http(mport, "/metrics")
    check(status == 200 and "twill_build_info" in body, "container: /metrics serves twill_build_info")


if __name__ == "__main__":
    {"static": cmd_static, "run": cmd_run, "probe": cmd_probe}[sys.argv[1]](*sys.argv[2:])
