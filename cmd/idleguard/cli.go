package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	qrcode "github.com/skip2/go-qrcode"

	"github.com/idleguard/idleguard/oidc"
	"github.com/idleguard/idleguard/oidc/mfa"
	"github.com/idleguard/idleguard/session"
)

// parseFlags parses flags that may come before or after positional
// arguments ("user add alice --config x.yaml"). An argument that starts
// with "-" but names no flag is positional: a session id may begin with
// "-" (URL-safe base64).
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if len(args) > 0 && !isFlag(fs, args[0]) {
			pos = append(pos, args[0])
			args = args[1:]
			continue
		}
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// isFlag reports whether arg is one of fs's flags (or a request for help).
func isFlag(fs *flag.FlagSet, arg string) bool {
	name, ok := strings.CutPrefix(arg, "-")
	if !ok {
		return false
	}
	name = strings.TrimPrefix(name, "-")
	name, _, _ = strings.Cut(name, "=")
	return name == "" || name == "h" || name == "help" || fs.Lookup(name) != nil
}

func openStore(ctx context.Context, configPath string) (*Config, database, error) {
	cfg, _, err := loadConfig(configPath)
	if err != nil {
		return nil, nil, err
	}
	store, err := openDatabase(ctx, cfg.Database)
	return cfg, store, err
}

// readPasswordHash reads a password from the first line of stdin and
// returns its argon2id hash.
func readPasswordHash(stdin io.Reader) (string, error) {
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	pw := strings.TrimRight(line, "\r\n")
	if len(pw) < 8 {
		return "", errors.New("the password (read from standard input) must have at least 8 characters")
	}
	return session.HashPassword(pw)
}

func userCmd(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("user", flag.ContinueOnError)
	configPath := fs.String("config", "", "configuration file")
	name := fs.String("name", "", "full name (user add)")
	email := fs.String("email", "", "email address (user add)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return errors.New("usage: idleguard user add|list|passwd|delete|totp [NAME], idleguard user mfa reset NAME")
	}
	cfg, store, err := openStore(ctx, *configPath)
	if err != nil {
		return err
	}
	defer store.Close()
	factors, err := mfa.NewFactors(ctx, store, cfg.secretKey(), mfa.IssuerLabel(cfg.Issuer), time.Now)
	if err != nil {
		return fmt.Errorf("keys.secret_key: %w", err)
	}
	if pos[0] == "list" {
		return listUsers(ctx, store, factors, stdout)
	}
	if pos[0] == "mfa" {
		if len(pos) != 3 || pos[1] != "reset" || pos[2] == "" {
			return errors.New("usage: idleguard user mfa reset NAME")
		}
		return resetMFA(ctx, store, factors, cfg, pos[2], stdout)
	}
	if len(pos) != 2 || pos[1] == "" {
		return fmt.Errorf("usage: idleguard user %s NAME", pos[0])
	}
	username := pos[1]
	switch pos[0] {
	case "add":
		hash, err := readPasswordHash(stdin)
		if err != nil {
			return err
		}
		u := &session.User{Username: username, PasswordHash: hash, Name: *name, Email: *email, CreatedAt: time.Now()}
		if err := store.CreateUser(ctx, u); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "added user %s (subject %s)\n", username, u.ID)
	case "passwd":
		hash, err := readPasswordHash(stdin)
		if err != nil {
			return err
		}
		if err := store.SetPassword(ctx, username, hash); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "password of %s changed\n", username)
	case "totp":
		return enrollTOTP(ctx, store, factors, username, stdout)
	case "delete":
		// End the person's sessions first (through the running provider,
		// which holds them), so that no app keeps them signed in.
		ended := endUserSessions(ctx, cfg, username)
		if err := store.DeleteUser(ctx, username); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "deleted user %s; %s. Tokens of a deleted user are refused at refresh and userinfo.\n", username, ended)
	default:
		return fmt.Errorf("unknown user command %q", pos[0])
	}
	return nil
}

// endUserSessions ends username's sessions through the running provider
// (which holds them) and says how that went.
func endUserSessions(ctx context.Context, cfg *Config, username string) string {
	api, err := adminClientFor(cfg)
	if err != nil {
		return "no provider to end their sessions through (admin.token unset)"
	}
	n, err := api.endUser(ctx, username)
	if err != nil {
		return "their sessions could not be ended: " + err.Error()
	}
	return fmt.Sprintf("ended %d live session(s)", n)
}

func listUsers(ctx context.Context, store database, factors *mfa.Factors, stdout io.Writer) error {
	users, err := store.ListUsers(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "USERNAME\tNAME\tEMAIL\tSUBJECT\tFACTORS")
	for _, u := range users {
		f, err := factors.Of(ctx, u.ID)
		if err != nil {
			return err
		}
		fmt.Fprintln(tw, printable(u.Username, u.Name, u.Email, u.ID, f.String()))
	}
	return tw.Flush()
}

// enrollTOTP enrolls (or replaces) username's TOTP factor and prints its
// otpauth URI as the first line, then the recovery codes, then, on a
// terminal, the QR code.
func enrollTOTP(ctx context.Context, store database, factors *mfa.Factors, username string, stdout io.Writer) error {
	u, err := store.UserByUsername(ctx, username)
	if err != nil {
		return fmt.Errorf("user %s: %w", username, err)
	}
	en, err := factors.NewEnrollment(u.Username)
	if err != nil {
		return err
	}
	codes, err := factors.Enroll(ctx, u.ID, en.Secret, 0, "cli")
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, en.URI)
	for _, c := range codes {
		fmt.Fprintln(stdout, c)
	}
	if f, ok := stdout.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			if q, err := qrcode.New(en.URI, qrcode.Low); err == nil {
				fmt.Fprint(stdout, q.ToSmallString(false))
			}
		}
	}
	return nil
}

// resetMFA removes every second factor of username and ends their sessions
// (a session's assurance came from factors that no longer exist).
func resetMFA(ctx context.Context, store database, factors *mfa.Factors, cfg *Config, username string, stdout io.Writer) error {
	u, err := store.UserByUsername(ctx, username)
	if err != nil {
		return fmt.Errorf("user %s: %w", username, err)
	}
	if err := factors.Reset(ctx, u.ID, "cli"); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "removed every second factor of %s; %s\n", username, endUserSessions(ctx, cfg, username))
	return nil
}

func keysCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("keys", flag.ContinueOnError)
	configPath := fs.String("config", "", "configuration file")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || pos[0] != "rotate" {
		return errors.New("usage: idleguard keys rotate [--config FILE]")
	}
	cfg, store, err := openStore(ctx, *configPath)
	if err != nil {
		return err
	}
	defer store.Close()
	pcfg, err := cfg.ProviderConfig()
	if err != nil {
		return err
	}
	kc := oidc.KeysConfigOf(pcfg)
	keys, err := oidc.LoadKeys(ctx, store, kc)
	if err != nil {
		return err
	}
	id, err := keys.Rotate(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "new signing key %s (%s), signing in %s once every replica publishes it; older keys stay published for %s after that\n",
		id, kc.Algorithm, kc.PublishDelay, kc.Retention)
	return nil
}

// adminClient calls the running provider's admin API: sessions live in the
// provider's memory, so ending one must go through it.
type adminClient struct {
	base, token string
	http        *http.Client
}

func newAdminClient(configPath string) (*adminClient, error) {
	cfg, _, err := loadConfig(configPath)
	if err != nil {
		return nil, err
	}
	return adminClientFor(cfg)
}

// adminClientFor is newAdminClient for a configuration already loaded.
func adminClientFor(cfg *Config) (*adminClient, error) {
	if cfg.Admin.Token == "" {
		return nil, errors.New("admin.token is not set in the configuration: the session and audit commands use the admin API")
	}
	return &adminClient{base: strings.TrimSuffix(cfg.Issuer, "/"), token: cfg.Admin.Token, http: &http.Client{Timeout: 30 * time.Second}}, nil
}

func (a *adminClient) call(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := a.http.Do(req)
	if err != nil {
		return fmt.Errorf("admin API at %s: %w (is the provider running?)", a.base, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("admin API %s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(body)))
	}
	return json.Unmarshal(body, out)
}

// endUser ends every session of username and returns how many it ended.
func (a *adminClient) endUser(ctx context.Context, username string) (int, error) {
	var out map[string]int
	if err := a.call(ctx, http.MethodPost, "/admin/users/"+url.PathEscape(username)+"/sessions/end", &out); err != nil {
		return 0, err
	}
	return out["ended"], nil
}

func sessionCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("session", flag.ContinueOnError)
	configPath := fs.String("config", "", "configuration file")
	ended := fs.Bool("ended", false, "include ended sessions (list)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return errors.New("usage: idleguard session list USER | end SID | end-user USER")
	}
	api, err := newAdminClient(*configPath)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	switch pos[0] {
	case "list":
		var out struct {
			Sessions []oidc.SessionView `json:"sessions"`
		}
		q := "/admin/sessions?user=" + url.QueryEscape(pos[1])
		if *ended {
			q += "&ended=1"
		}
		if err := api.call(ctx, http.MethodGet, q, &out); err != nil {
			return err
		}
		return enc.Encode(out.Sessions)
	case "end":
		var out oidc.SessionView
		if err := api.call(ctx, http.MethodPost, "/admin/sessions/"+url.PathEscape(pos[1])+"/end", &out); err != nil {
			return err
		}
		return enc.Encode(out)
	case "end-user":
		n, err := api.endUser(ctx, pos[1])
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "ended %d session(s) of %s\n", n, pos[1])
		return nil
	}
	return fmt.Errorf("unknown session command %q", pos[0])
}

func auditCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	configPath := fs.String("config", "", "configuration file")
	user := fs.String("user", "", "only this username")
	sid := fs.String("sid", "", "only this session")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	api, err := newAdminClient(*configPath)
	if err != nil {
		return err
	}
	var out struct {
		Events []session.AuditEvent `json:"events"`
	}
	q := url.Values{}
	if *user != "" {
		q.Set("user", *user)
	}
	if *sid != "" {
		q.Set("sid", *sid)
	}
	if err := api.call(ctx, http.MethodGet, "/admin/audit?"+q.Encode(), &out); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tEVENT\tSID\tCLIENT\tREASON\tBY\tDETAIL")
	for _, e := range out.Events {
		fmt.Fprintln(tw, printable(e.At.Format(time.RFC3339), e.Kind, e.SID, e.ClientID, e.Reason, e.Initiator, e.Detail))
	}
	return tw.Flush()
}

// printable joins fields into one tab-separated line for a terminal,
// escaping in each what a terminal acts on instead of showing: control
// characters (a newline or NUL in a recorded username would forge a line of
// its own), format characters such as the bidirectional overrides (U+202E
// shows what follows reversed) and line separators, and the backslash that
// starts an escape. The line shows what was recorded, unambiguously; the
// admin API's JSON carries the same values unchanged.
func printable(fields ...string) string {
	var b strings.Builder
	for i, f := range fields {
		if i > 0 {
			b.WriteByte('\t')
		}
		for _, r := range f {
			switch {
			case r == '\\':
				b.WriteString(`\\`)
			case unicode.IsControl(r) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp):
				q := strconv.QuoteRune(r)
				b.WriteString(q[1 : len(q)-1])
			default:
				b.WriteRune(r)
			}
		}
	}
	return b.String()
}
