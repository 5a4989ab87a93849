package packaging

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The tests in this file check the package make deb built. make test-deb
// (which make test runs) builds it and sets CALLSCRIBE_DEB; they skip when it
// is not set (a plain go test ./...), or when not root.

// debUnderTest is the .deb to check, or the test is skipped.
func debUnderTest(t *testing.T, needRoot bool) string {
	t.Helper()
	deb := os.Getenv("CALLSCRIBE_DEB")
	if deb == "" {
		t.Skip("CALLSCRIBE_DEB is not set: make test-deb (part of make test) builds the package and runs this test")
	}
	if needRoot && os.Geteuid() != 0 {
		t.Skip("not root: installing into a debootstrapped Debian root needs root (make test runs as root in CI)")
	}
	if _, err := os.Stat(deb); err != nil {
		t.Fatal(err)
	}
	return deb
}

// TestDebLintian: no error and no warning that is not overridden (each
// override in packaging/deb/lintian-overrides says why).
func TestDebLintian(t *testing.T) {
	deb := debUnderTest(t, false)
	t.Parallel() // with TestDebInChroot: lintian is CPU, the chroot mostly I/O
	start := time.Now()
	out, err := exec.Command("lintian", "--fail-on", "error,warning", deb).CombinedOutput()
	t.Logf("lintian (%.0f s):\n%s", time.Since(start).Seconds(), out)
	t.Logf("overridden (the reasons are in packaging/deb/lintian-overrides): %s", overrideTags(t))
	if err != nil {
		t.Fatalf("lintian: %v", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "E: ") || strings.HasPrefix(l, "W: ") {
			t.Errorf("lintian: %s", l)
		}
	}
}

// overrideTags lists the tags packaging/deb/lintian-overrides overrides.
func overrideTags(t *testing.T) string {
	b, err := os.ReadFile("deb/lintian-overrides")
	if err != nil {
		t.Fatal(err)
	}
	var tags []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && l[0] != '#' {
			tags = append(tags, l)
		}
	}
	return strings.Join(tags, "; ")
}

// TestRulesPromtool checks the alerting rules and runs their unit tests
// (monitoring/prometheus/callscribe-rules.test.yml) with promtool from
// Debian's prometheus package (scripts/deps.sh deb-test unpacks it).
func TestRulesPromtool(t *testing.T) {
	pt := os.Getenv("CALLSCRIBE_PROMTOOL")
	if pt == "" {
		var err error
		if pt, err = exec.LookPath("promtool"); err != nil {
			t.Skip("no promtool (make test-deb unpacks Debian's and sets CALLSCRIBE_PROMTOOL)")
		}
	}
	for _, args := range [][]string{{"check", "rules", "callscribe-rules.yml"}, {"test", "rules", "callscribe-rules.test.yml"}} {
		cmd := exec.Command(pt, args...)
		cmd.Dir = "../monitoring/prometheus"
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestDebInChroot installs the package with apt into a clean Debian 12 root
// (debootstrap --variant=minbase, cached), checks what was installed, starts
// the coordinator once as the service user, upgrades to a higher version
// over an edited conffile and the data, removes and purges it.
func TestDebInChroot(t *testing.T) {
	deb := debUnderTest(t, true)
	t.Parallel()
	for _, tool := range []string{"debootstrap", "unshare", "chroot", "dpkg-deb", "patchelf", "tar", "zstd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing (scripts/deps.sh deb-test installs it)", tool)
		}
	}
	version := dpkgField(t, deb, "Version")
	r := newRoot(t)
	must := func(step, script string) string {
		t.Helper()
		start := time.Now()
		out, err := r.run(script)
		t.Logf("%s (%.1f s)", step, time.Since(start).Seconds())
		if err != nil {
			t.Fatalf("%s: %v\n%s", step, err, out)
		}
		return out
	}

	// Install: apt resolves the Depends from the mirror; services must not
	// start (policy-rc.d, and there is no systemd running in a chroot). The
	// packages apt fetches are kept in the cache for the next run.
	r.put(t, deb, "/tmp/"+filepath.Base(deb))
	archives := filepath.Join(r.cache, "apt-archives")
	copyDebs(t, archives, r.path("/var/cache/apt/archives"))
	// A cached root's package lists can predate a point release (the old
	// versions are gone from the mirror): update and retry once.
	out := must("apt-get install ./"+filepath.Base(deb), `
		i="apt-get install -y --no-install-recommends /tmp/`+filepath.Base(deb)+`"
		$i || { apt-get update -qq && $i; }`)
	copyDebs(t, r.path("/var/cache/apt/archives"), archives)
	if !strings.Contains(out, "Setting up callscribe") {
		t.Fatalf("apt did not set up callscribe:\n%s", out)
	}
	must("installed as expected", `
		test "$(dpkg-query -W -f='${Status} ${Version}' callscribe)" = "install ok installed `+version+`"
		getent passwd callscribe | grep -q ':/var/lib/callscribe:'
		id -nG callscribe | grep -qw video
		test "$(stat -c '%a %U %G' /etc/callscribe)" = "750 root callscribe"
		test -L /etc/systemd/system/multi-user.target.wants/callscribe-coordinator.service
		test ! -e /etc/systemd/system/multi-user.target.wants/callscribe-agent.service
		grep -qx 'ExecStart=/usr/bin/callscribe coordinator --config /etc/callscribe/coordinator.toml' /lib/systemd/system/callscribe-coordinator.service
		grep -qx 'ExecStart=/usr/bin/callscribe agent --config /etc/callscribe/agent.toml' /lib/systemd/system/callscribe-agent.service
		if grep -r /usr/local /lib/systemd/system/callscribe-*.service /etc/callscribe; then exit 1; fi
		test -s /usr/share/man/man1/callscribe.1.gz && test -s /usr/share/man/man1/callscribe-coordinator.1.gz
		test -s /usr/share/callscribe/monitoring/grafana/callscribe-dashboard.json
		test -s /usr/share/callscribe/monitoring/prometheus/callscribe-rules.yml
		test -s /usr/share/callscribe/firmware-configs/h100-sxm.toml
		test -s /usr/share/doc/callscribe/README.md && test -s /usr/share/doc/callscribe/copyright
		test ! -e /var/lib/callscribe/ca.pem   # keys are made by the service, never shipped
	`)
	if rp := strings.TrimSpace(r.host(t, "patchelf", "--print-rpath", r.path("/usr/bin/callscribe"))); rp != "$ORIGIN/../lib/callscribe" {
		t.Fatalf("installed binary's RUNPATH is %q, want $ORIGIN/../lib/callscribe only", rp)
	}
	must("the binary runs and finds its libraries and models", `
		callscribe version
		callscribe models check
		callscribe config check /etc/callscribe/coordinator.toml
		callscribe config check /etc/callscribe/agent.toml
		for p in /usr/share/callscribe/firmware-configs/*.toml; do callscribe config check "$p"; done
	`)
	if out := must("systemd-analyze verify", `systemd-analyze verify /lib/systemd/system/callscribe-coordinator.service /lib/systemd/system/callscribe-agent.service 2>&1`); strings.TrimSpace(out) != "" {
		t.Fatalf("systemd-analyze verify printed:\n%s", out)
	}
	if out := must("bash completion", `bash -c '. /usr/share/bash-completion/completions/callscribe; COMP_WORDS=(callscribe mod); COMP_CWORD=1; _callscribe; echo "${COMPREPLY[*]}"; COMP_WORDS=(callscribe models install --de); COMP_CWORD=3; _callscribe; echo "${COMPREPLY[*]}"'`); out != "models\n--dest\n" {
		t.Fatalf("bash completion gave %q", out)
	}

	// First start, as the unit would run it (StateDirectory= makes the data
	// directory): the coordinator creates its CA, serving certificate and
	// tokens in /var/lib/callscribe, reading its configuration as the
	// callscribe user through the 0750 /etc/callscribe.
	must("first start of the coordinator as the callscribe user", `
		install -d -o callscribe -g callscribe -m 0700 /var/lib/callscribe
		setpriv --reuid=callscribe --regid=callscribe --init-groups \
			callscribe coordinator --config /etc/callscribe/coordinator.toml --http 127.0.0.1:0 --quic 127.0.0.1:0 >/tmp/first-start.log 2>&1 &
		for i in $(seq 100); do grep -q 'coordinator listening' /tmp/first-start.log && break; kill -0 $! 2>/dev/null || break; sleep 0.1; done
		grep -q 'coordinator listening' /tmp/first-start.log || { cat /tmp/first-start.log; exit 1; }
		kill -TERM $!; wait $! || true
		for f in ca.pem ca-key.pem server.pem server-key.pem console.token node.token; do test -s /var/lib/callscribe/$f; done
		test "$(stat -c '%a %U' /var/lib/callscribe/ca-key.pem)" = "600 callscribe"
	`)

	// Upgrade: data (the real state from the first start, a marker and a
	// fake state file) and an edited conffile must survive; the new
	// package's version of the conffile differs, so without --force-confold
	// dpkg would have asked.
	must("data and a local edit before the upgrade", `
		echo "marker $$" >/var/lib/callscribe/marker
		echo fake >/var/lib/callscribe/store/FAKE-STATE
		chown callscribe:callscribe /var/lib/callscribe/marker /var/lib/callscribe/store/FAKE-STATE
		sed -i 's/^idle_slots *= *2 /idle_slots     = 3 /' /etc/callscribe/coordinator.toml
		echo '# edited by the operator' >>/etc/callscribe/coordinator.toml
		grep -q '^idle_slots     = 3 ' /etc/callscribe/coordinator.toml
	`)
	before := must("fingerprint the data", `cd /var/lib/callscribe && find . -type f -exec sha256sum {} + | sort -k2; stat -c '%n %a %U %G' . marker ca-key.pem; id callscribe`)
	newVersion := version + "+upgradetest1"
	up := r.upgradeDeb(t, deb, newVersion)
	r.put(t, up, "/tmp/"+filepath.Base(up))
	out = must("apt-get install the higher version (--force-confold)",
		`apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-confold /tmp/`+filepath.Base(up)+` </dev/null`)
	if !strings.Contains(out, "Using current old file as you requested") {
		t.Fatalf("dpkg did not meet the edited conffile (the upgrade should ship a changed one):\n%s", out)
	}
	must("after the upgrade", `
		dpkg --compare-versions "$(dpkg-query -W -f='${Version}' callscribe)" eq '`+newVersion+`'
		grep -q '^idle_slots     = 3 ' /etc/callscribe/coordinator.toml
		grep -qx '# edited by the operator' /etc/callscribe/coordinator.toml
		grep -qx '# shipped by the upgrade' /etc/callscribe/coordinator.toml.dpkg-dist
		test "$(stat -c '%a %U %G' /etc/callscribe)" = "750 root callscribe"
		callscribe config check /etc/callscribe/coordinator.toml >/dev/null
		callscribe models check >/dev/null
	`)
	if after := must("fingerprint the data again", `cd /var/lib/callscribe && find . -type f -exec sha256sum {} + | sort -k2; stat -c '%n %a %U %G' . marker ca-key.pem; id callscribe`); after != before {
		t.Fatalf("the upgrade changed the data directory or the user:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// remove keeps data, keys, configuration and the user; purge deletes them.
	must("apt-get remove", `apt-get remove -y callscribe`)
	must("after remove", `
		test -s /var/lib/callscribe/marker && test -s /var/lib/callscribe/ca-key.pem
		test -s /etc/callscribe/coordinator.toml
		getent passwd callscribe >/dev/null
		test ! -e /usr/bin/callscribe
	`)
	must("apt-get purge", `apt-get purge -y callscribe`)
	must("after purge", `
		test ! -e /etc/callscribe
		test ! -e /var/lib/callscribe
		if getent passwd callscribe || getent group callscribe; then exit 1; fi
		if dpkg-query -W -f='${Status}\n' callscribe 2>/dev/null | grep -v '^unknown ok not-installed$'; then exit 1; fi
		left=$(find /etc/systemd/system /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked -name '*callscribe*' 2>/dev/null || true)
		if [ -n "$left" ]; then echo "left behind: $left"; exit 1; fi
		test ! -e /usr/share/callscribe
	`)
}

// root is a Debian 12 root in a temporary directory.
type root struct {
	dir, cache string
}

func (r *root) path(p string) string { return filepath.Join(r.dir, p) }

// run runs a shell script in the root as root, in a private mount namespace
// (proc, sys, devpts and /run are mounted for it and vanish with it, even if
// the test is killed).
func (r *root) run(script string) (string, error) {
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-ec", `
		mount -t proc proc "$ROOT/proc"
		mount -t sysfs sysfs "$ROOT/sys" 2>/dev/null || true
		mount -t devpts -o newinstance,ptmxmode=0666 devpts "$ROOT/dev/pts" 2>/dev/null || true
		mount -t tmpfs tmpfs "$ROOT/run"
		exec chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
			DEBIAN_FRONTEND=noninteractive ${http_proxy:+http_proxy=$http_proxy} /bin/bash -ec "$STEP"`)
	cmd.Env = append(os.Environ(), "ROOT="+r.dir, "STEP="+script)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// copyDebs links (or copies) the .debs of one directory that the other lacks.
func copyDebs(t *testing.T, from, to string) {
	t.Helper()
	debs, _ := filepath.Glob(filepath.Join(from, "*.deb"))
	for _, d := range debs {
		dst := filepath.Join(to, filepath.Base(d))
		if _, err := os.Stat(dst); err == nil {
			continue
		}
		if os.Link(d, dst) == nil {
			continue
		}
		b, err := os.ReadFile(d)
		if err == nil {
			err = os.WriteFile(dst+".tmp", b, 0o644)
		}
		if err == nil {
			err = os.Rename(dst+".tmp", dst)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// host runs a tool of this machine on files of the root.
func (r *root) host(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// put copies a file of this machine into the root.
func (r *root) put(t *testing.T, src, dst string) {
	t.Helper()
	d := r.path(dst)
	_ = os.Remove(d)
	if err := os.Link(src, d); err == nil {
		return
	}
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// upgradeDeb rebuilds the package with dpkg-deb at a higher version, with one
// line added to /etc/callscribe/coordinator.toml (so that dpkg has an updated
// conffile to offer over the operator's edit).
func (r *root) upgradeDeb(t *testing.T, deb, version string) string {
	t.Helper()
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	r.host(t, "dpkg-deb", "--raw-extract", deb, tree)
	ctl := filepath.Join(tree, "DEBIAN", "control")
	b, err := os.ReadFile(ctl)
	if err != nil {
		t.Fatal(err)
	}
	b = regexp.MustCompile(`(?m)^Version: .*$`).ReplaceAll(b, []byte("Version: "+version))
	conf := filepath.Join(tree, "etc", "callscribe", "coordinator.toml")
	f, err := os.OpenFile(conf, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(f, "# shipped by the upgrade")
	f.Close()
	sum := fileSHA(t, conf, "md5")
	sums, err := os.ReadFile(filepath.Join(tree, "DEBIAN", "md5sums"))
	if err != nil {
		t.Fatal(err)
	}
	sums = regexp.MustCompile(`(?m)^[0-9a-f]{32}  etc/callscribe/coordinator.toml$`).ReplaceAll(sums, []byte(sum+"  etc/callscribe/coordinator.toml"))
	if err := os.WriteFile(ctl, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "DEBIAN", "md5sums"), sums, 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "callscribe_"+version+"_amd64.deb")
	r.host(t, "dpkg-deb", "--root-owner-group", "-Znone", "--build", tree, out)
	return out
}

func fileSHA(t *testing.T, path, kind string) string {
	t.Helper()
	if kind == "md5" {
		out, err := exec.Command("md5sum", path).Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.Fields(string(out))[0]
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func dpkgField(t *testing.T, deb, field string) string {
	t.Helper()
	out, err := exec.Command("dpkg-deb", "--field", deb, field).Output()
	if err != nil {
		t.Fatalf("dpkg-deb --field %s %s: %v", deb, field, err)
	}
	return strings.TrimSpace(string(out))
}

// newRoot unpacks the cached minbase root (making it first if needed) into a
// temporary directory, with this machine's resolv.conf and a policy-rc.d
// that forbids starting services.
func newRoot(t *testing.T) *root {
	t.Helper()
	cache := os.Getenv("CALLSCRIBE_TEST_CACHE")
	if cache == "" {
		cache = "/var/cache/callscribe-test"
	}
	if err := os.MkdirAll(filepath.Join(cache, "apt-archives"), 0o755); err != nil {
		t.Fatal(err)
	}
	tarball := bootstrapTarball(t, cache)
	r := &root{dir: t.TempDir(), cache: cache}
	start := time.Now()
	if out, err := exec.Command("tar", "--zstd", "-xpf", tarball, "-C", r.dir).CombinedOutput(); err != nil {
		t.Fatalf("unpacking %s: %v\n%s", tarball, err, out)
	}
	t.Logf("unpacked %s (%.1f s)", filepath.Base(tarball), time.Since(start).Seconds())
	if b, err := os.ReadFile("/etc/resolv.conf"); err == nil {
		_ = os.WriteFile(r.path("/etc/resolv.conf"), b, 0o644)
	}
	if err := os.WriteFile(r.path("/usr/sbin/policy-rc.d"), []byte("#!/bin/sh\n# no service starts in this test root\nexit 101\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return r
}

// bootstrapTarball returns the cached minbase root for today and this
// mirror, making it with debootstrap when there is none (older ones are
// deleted). A lock keeps concurrent runs from bootstrapping twice.
func bootstrapTarball(t *testing.T, cache string) string {
	t.Helper()
	mirror := debianMirror()
	h := sha256.Sum256([]byte(mirror))
	prefix := "bookworm-minbase-" + hex.EncodeToString(h[:4]) + "-"
	tarball := filepath.Join(cache, prefix+time.Now().UTC().Format("20060102")+".tar.zst")
	lock, err := os.OpenFile(filepath.Join(cache, ".bootstrap.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(tarball); err == nil {
		return tarball
	}
	start := time.Now()
	dir, err := os.MkdirTemp(cache, "bootstrap-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	rootDir := filepath.Join(dir, "root")
	// The downloaded .debs are kept for the next day's bootstrap.
	debs := filepath.Join(cache, "debootstrap-debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("debootstrap", "--variant=minbase", "--cache-dir="+debs, "bookworm", rootDir, mirror)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("debootstrap --variant=minbase bookworm %s: %v\n%s", mirror, err, tail(out, 40))
	}
	// Package lists are part of the cache, so a cached run needs no apt-get update.
	r := &root{dir: rootDir, cache: cache}
	if out, err := r.run(`apt-get update -qq && apt-get clean`); err != nil {
		t.Fatalf("apt-get update in the new root: %v\n%s", err, out)
	}
	tmp := tarball + ".tmp"
	if out, err := exec.Command("tar", "--zstd", "-cpf", tmp, "-C", rootDir, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	if err := os.Rename(tmp, tarball); err != nil {
		t.Fatal(err)
	}
	old, _ := filepath.Glob(filepath.Join(cache, prefix+"*.tar.zst"))
	for _, o := range old {
		if o != tarball {
			_ = os.Remove(o)
		}
	}
	t.Logf("bootstrapped a Debian 12 minbase root from %s into %s (%.0f s)", mirror, tarball, time.Since(start).Seconds())
	return tarball
}

// debianMirror is CALLSCRIBE_DEBIAN_MIRROR, else the first URI this
// machine's apt uses for bookworm (deb822 or one-line sources), else
// deb.debian.org.
func debianMirror() string {
	if m := os.Getenv("CALLSCRIBE_DEBIAN_MIRROR"); m != "" {
		return m
	}
	if f, err := os.Open("/etc/apt/sources.list.d/debian.sources"); err == nil {
		defer f.Close()
		var uris, suites string
		sc := bufio.NewScanner(f)
		flush := func() string {
			if uris != "" && regexp.MustCompile(`(^|\s)bookworm(\s|$)`).MatchString(suites) {
				return strings.Fields(uris)[0]
			}
			uris, suites = "", ""
			return ""
		}
		for sc.Scan() {
			l := strings.TrimSpace(sc.Text())
			if l == "" {
				if m := flush(); m != "" {
					return m
				}
				continue
			}
			if v, ok := strings.CutPrefix(l, "URIs:"); ok {
				uris = strings.TrimSpace(v)
			}
			if v, ok := strings.CutPrefix(l, "Suites:"); ok {
				suites = strings.TrimSpace(v)
			}
		}
		if m := flush(); m != "" {
			return m
		}
	}
	if b, err := os.ReadFile("/etc/apt/sources.list"); err == nil {
		if m := regexp.MustCompile(`(?m)^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s`).FindSubmatch(b); m != nil {
			return string(m[1])
		}
	}
	return "http://deb.debian.org/debian"
}

func tail(b []byte, n int) string {
	l := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
