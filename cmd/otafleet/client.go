package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
)

// Environment variables the client verbs read.
const (
	envAPI     = "OTAFLEET_API"
	envToken   = "OTAFLEET_TOKEN"
	envDataDir = "OTAFLEET_DATA_DIR"
)

// clientOpts are the flags every client verb shares.
type clientOpts struct {
	api      string
	token    string
	dataDir  string
	json     bool
	quiet    bool
	timeout  time.Duration
	progress progressMode

	stdout, stderr io.Writer
}

// register adds the shared flags to a resource command (inherited by its
// verbs).
func (o *clientOpts) register(cmd *cobra.Command) {
	fs := cmd.PersistentFlags()
	fs.StringVar(&o.api, "api", "", "API address (host:port or http(s)://...); default: $"+envAPI+", else the \"api\" entry of DATA-DIR/addrs.json, else 127.0.0.1:8080")
	fs.StringVar(&o.token, "token", "", "API bearer token; default: $"+envToken+", else DATA-DIR/api-token")
	fs.StringVar(&o.dataDir, "data-dir", "", "the server's data folder, for its addrs.json and api-token; default: $"+envDataDir+", else otafleet-data")
	fs.BoolVar(&o.json, "json", false, "print the server's answer as JSON (the Connect JSON of the response message) instead of a table")
	fs.BoolVarP(&o.quiet, "quiet", "q", false, "print only the IDs of the answer, one per line (for scripts: P=$(otafleet product create ... -q))")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "deadline of each call (not of uploads and watches)")
	o.progress = "auto"
	fs.Var(&o.progress, "progress", "progress bars: auto (when stderr is a terminal), always or never")
}

// client is a connection to the API.
type client struct {
	opts     *clientOpts
	products otafleetv1connect.ProductServiceClient
	devices  otafleetv1connect.DeviceServiceClient
	groups   otafleetv1connect.GroupServiceClient
	packages otafleetv1connect.PackageServiceClient
	tasks    otafleetv1connect.TaskServiceClient
	cluster  otafleetv1connect.ClusterServiceClient
}

// bearerTransport adds the token to every request.
type bearerTransport struct {
	token string
	next  http.RoundTripper
}

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

func (o *clientOpts) resolvedDataDir() string {
	if o.dataDir != "" {
		return o.dataDir
	}
	if d := os.Getenv(envDataDir); d != "" {
		return d
	}
	return defaultServeConfig().DataDir
}

// baseURL resolves the API address.
func (o *clientOpts) baseURL() (string, error) {
	addr := o.api
	if addr == "" {
		addr = os.Getenv(envAPI)
	}
	if addr == "" {
		path := filepath.Join(o.resolvedDataDir(), "addrs.json")
		b, err := os.ReadFile(path)
		switch {
		case err == nil:
			var addrs map[string]string
			if err := json.Unmarshal(b, &addrs); err != nil {
				return "", fmt.Errorf("%s: %w", path, err)
			}
			addr = addrs["api"]
		case !errors.Is(err, os.ErrNotExist):
			return "", err
		}
	}
	if addr == "" {
		addr = defaultServeConfig().APIAddr
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	if !strings.HasPrefix(addr, "http://") && !strings.HasPrefix(addr, "https://") {
		return "", usageError(fmt.Errorf("--api %q: want host:port, http://host:port or https://host:port", addr))
	}
	return strings.TrimSuffix(addr, "/"), nil
}

// resolvedToken finds the token: --token, $OTAFLEET_TOKEN, DATA-DIR/api-token.
func (o *clientOpts) resolvedToken() (string, error) {
	if o.token != "" {
		return o.token, nil
	}
	if t := os.Getenv(envToken); t != "" {
		return t, nil
	}
	path := filepath.Join(o.resolvedDataDir(), "api-token")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", usageError(fmt.Errorf("no API token: pass --token, set %s, or point --data-dir at the server's data folder (%s does not exist)", envToken, path))
	}
	if err != nil {
		return "", fmt.Errorf("reading the API token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// connect builds the API clients: Connect protocol, over h2c for http://
// and HTTP/2 over TLS for https://.
func (o *clientOpts) connect() (*client, error) {
	base, err := o.baseURL()
	if err != nil {
		return nil, err
	}
	token, err := o.resolvedToken()
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if strings.HasPrefix(base, "http://") {
		p := new(http.Protocols)
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = p
	}
	hc := &http.Client{Transport: bearerTransport{token: token, next: tr}}
	opts := []connect.ClientOption{connect.WithSendMaxBytes(64 << 20)}
	return &client{
		opts:     o,
		products: otafleetv1connect.NewProductServiceClient(hc, base, opts...),
		devices:  otafleetv1connect.NewDeviceServiceClient(hc, base, opts...),
		groups:   otafleetv1connect.NewGroupServiceClient(hc, base, opts...),
		packages: otafleetv1connect.NewPackageServiceClient(hc, base, opts...),
		tasks:    otafleetv1connect.NewTaskServiceClient(hc, base, opts...),
		cluster:  otafleetv1connect.NewClusterServiceClient(hc, base, opts...),
	}, nil
}

// call returns a context bounded by --timeout for one unary call.
func (o *clientOpts) call(ctx context.Context) (context.Context, context.CancelFunc) {
	if o.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, o.timeout)
}

// progressMode is the value of --progress: auto, always or never; the flag
// refuses any other.
type progressMode string

func (p *progressMode) String() string { return string(*p) }
func (p *progressMode) Type() string   { return "auto|always|never" }
func (p *progressMode) Set(v string) error {
	if err := oneOf("auto", "always", "never")(v); err != nil {
		return err
	}
	*p = progressMode(v)
	return nil
}

// showProgress reports whether progress bars are drawn.
func (o *clientOpts) showProgress() bool {
	switch o.progress {
	case "always":
		return true
	case "never":
		return false
	}
	f, ok := o.stderr.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// printJSON writes m as Connect JSON (lowerCamelCase names, enum names).
func (o *clientOpts) printJSON(m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(o.stdout, "%s\n", b)
	return err
}

// table writes rows under a header, aligned.
func (o *clientOpts) table(header []string, rows [][]string) error {
	w := tabwriter.NewWriter(o.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(w, strings.Join(r, "\t"))
	}
	return w.Flush()
}

// fields writes name/value pairs of one record, aligned.
func (o *clientOpts) fields(pairs ...string) error {
	w := tabwriter.NewWriter(o.stdout, 0, 0, 2, ' ', 0)
	for i := 0; i+1 < len(pairs); i += 2 {
		fmt.Fprintf(w, "%s:\t%s\n", pairs[i], pairs[i+1])
	}
	return w.Flush()
}

// show prints m as JSON with --json, its IDs with --quiet, else calls
// human.
func (o *clientOpts) show(m proto.Message, human func() error) error {
	switch {
	case o.json:
		return o.printJSON(m)
	case o.quiet:
		for _, id := range recordIDs(m.ProtoReflect()) {
			if _, err := fmt.Fprintln(o.stdout, id); err != nil {
				return err
			}
		}
		return nil
	}
	return human()
}

// recordIDs returns the IDs an answer names: a record's first string field
// called *_id, else those of the records it holds (single or repeated) and
// the entries of repeated string fields called *_ids, in field order.
func recordIDs(m protoreflect.Message) []string {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		if f.Kind() == protoreflect.StringKind && !f.IsList() && strings.HasSuffix(string(f.Name()), "_id") {
			return []string{m.Get(f).String()}
		}
	}
	var out []string
	for i := range fields.Len() {
		f := fields.Get(i)
		switch {
		case f.Kind() == protoreflect.MessageKind && f.IsList():
			l := m.Get(f).List()
			for j := range l.Len() {
				out = append(out, recordIDs(l.Get(j).Message())...)
			}
		case f.Kind() == protoreflect.MessageKind && !f.IsMap() && m.Has(f):
			out = append(out, recordIDs(m.Get(f).Message())...)
		case f.Kind() == protoreflect.StringKind && f.IsList() && strings.HasSuffix(string(f.Name()), "_ids"):
			l := m.Get(f).List()
			for j := range l.Len() {
				out = append(out, l.Get(j).String())
			}
		}
	}
	return out
}

// fmtTime formats a timestamp for tables; "-" when unset.
func fmtTime(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

// plural is "1 device", "2 devices": n and the noun in its number.
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// naturalCompare orders IDs as people count: the digit runs of a and b
// compare by their numbers, so sim-2 comes before sim-10; the rest
// compares byte by byte.
func naturalCompare(a, b string) int {
	for a != "" && b != "" {
		da, db := digitRun(a), digitRun(b)
		if da == 0 || db == 0 {
			if a[0] != b[0] {
				return cmp.Compare(a[0], b[0])
			}
			a, b = a[1:], b[1:]
			continue
		}
		na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
		if c := cmp.Or(cmp.Compare(len(na), len(nb)), strings.Compare(na, nb), cmp.Compare(da, db)); c != 0 {
			return c
		}
		a, b = a[da:], b[db:]
	}
	return cmp.Compare(len(a), len(b))
}

// digitRun is the length of the run of ASCII digits s starts with.
func digitRun(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}

// orDash returns s, or "-" when empty.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// enumName strips an enum value's type prefix: TASK_STATUS_SUCCESS → SUCCESS.
func enumName(full, prefix string) string {
	return strings.TrimPrefix(full, prefix)
}

// parseEnum maps a user's word (any case, '-' or '_', with or without the
// prefix) to an enum value among names (the full value names, without
// UNSPECIFIED).
func parseEnum(flag, word, prefix string, values map[string]int32) (int32, error) {
	w := strings.ToUpper(strings.ReplaceAll(word, "-", "_"))
	w = strings.TrimPrefix(w, prefix)
	if v, ok := values[prefix+w]; ok && v != 0 {
		return v, nil
	}
	var names []string
	for n, v := range values {
		if v != 0 {
			names = append(names, strings.ToLower(strings.TrimPrefix(n, prefix)))
		}
	}
	slices.Sort(names)
	return 0, usageError(fmt.Errorf("%s %q: want one of %s", flag, word, strings.Join(names, ", ")))
}

// listFlags are the paging flags of list verbs.
type listFlags struct {
	pageSize  int32
	pageToken string
	all       bool
}

func (l *listFlags) register(cmd *cobra.Command) {
	cmd.Flags().Int32Var(&l.pageSize, "page-size", 0, "at most this many entries per page (server default 100, at most 1000)")
	cmd.Flags().StringVar(&l.pageToken, "page-token", "", "continue after an earlier page (its next_page_token)")
	cmd.Flags().BoolVar(&l.all, "all", false, "read every page")
}

// pages calls fetch from l.pageToken on, once, or until the last page with
// --all; fetch returns the next page token.
func (l *listFlags) pages(fetch func(token string) (string, error)) (string, error) {
	token := l.pageToken
	for {
		next, err := fetch(token)
		if err != nil {
			return "", err
		}
		if !l.all || next == "" {
			return next, nil
		}
		token = next
	}
}

// nextPageHint tells the user how to read on, on stderr.
func (o *clientOpts) nextPageHint(next string) {
	if next != "" && !o.json {
		fmt.Fprintf(o.stderr, "more: --page-token %s (or --all)\n", next)
	}
}

// protoPtr is *T for a generated message type T.
type protoPtr[T any] interface {
	*T
	proto.Message
}

// callShow makes one unary call bounded by --timeout and prints its answer:
// JSON, IDs or human (see show).
func callShow[T any, PT protoPtr[T]](o *clientOpts, cmd *cobra.Command, call func(context.Context, *client) (*connect.Response[T], error), human func(PT) error) error {
	c, err := o.connect()
	if err != nil {
		return err
	}
	ctx, cancel := o.call(cmd.Context())
	defer cancel()
	res, err := call(ctx, c)
	if err != nil {
		return err
	}
	msg := PT(res.Msg)
	return o.show(msg, func() error { return human(msg) })
}

// listShow reads pages (one, or every one with --all) and prints them as
// one answer. merge appends a page to all, sets all's next page token and
// returns it.
func listShow[T any, PT protoPtr[T]](o *clientOpts, cmd *cobra.Command, l *listFlags, page func(ctx context.Context, c *client, token string) (*connect.Response[T], error), merge func(all, page PT) string, human func(PT) error) error {
	c, err := o.connect()
	if err != nil {
		return err
	}
	all := PT(new(T))
	next, err := l.pages(func(token string) (string, error) {
		ctx, cancel := o.call(cmd.Context())
		defer cancel()
		res, err := page(ctx, c, token)
		if err != nil {
			return "", err
		}
		return merge(all, PT(res.Msg)), nil
	})
	if err != nil {
		return err
	}
	defer o.nextPageHint(next)
	return o.show(all, func() error { return human(all) })
}
