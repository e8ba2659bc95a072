package rpc

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"unicode"
	"unicode/utf8"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
	"github.com/otafleet/otafleet/transport"
)

// Size limits of the API.
const (
	// MaxInlineContent bounds CreatePackageRequest.content.
	MaxInlineContent = 8 << 20
	// MaxUploadBytes bounds the file of an UploadPackage stream.
	MaxUploadBytes = 1 << 30
	// MaxChunkBytes bounds one UploadPackage chunk.
	MaxChunkBytes = 4 << 20
	// MaxRequestBytes bounds one request message (one stream message for
	// UploadPackage): the inline content plus room for the other fields.
	// Larger bodies fail with resource_exhausted before they are decoded.
	MaxRequestBytes = MaxInlineContent + 256<<10
)

// Deps is what the handler needs.
type Deps struct {
	// Registry stores products, devices, groups, packages and their files.
	Registry persistence.Registry
	// Engine answers GetDevice's live state (online, versions, radio). It
	// may be nil (tests): GetDevice then returns only the registry record.
	Engine *actors.Engine
	// Token is the bearer token every call must carry; required.
	Token string
	// Logger receives internal errors; nil discards them.
	Logger *slog.Logger
	// Clock stamps creation times and paces WatchTask; nil means
	// clock.Real().
	Clock clock.Clock
	// Console, when set, lets API calls authenticate with a console
	// session (cookie and CSRF header) as well as the bearer token; its
	// token must be Token.
	Console *ConsoleAuth
	// Done, when set, is closed when the server shuts down: the chunked
	// uploads in progress (UploadPackageChunk) are then abandoned and their
	// bytes deleted, so that none keeps a blob write open in the store,
	// and later ones are refused (unavailable).
	Done <-chan struct{}
	// Store is the actors' journal, read by GetDeviceTimeline (and for task
	// creation times). It may be nil: GetDeviceTimeline then answers
	// unavailable.
	Store persistence.EventStore
	// Sessions is the store's device sessions, counted by GetClusterStatus
	// (per node with a persistence.NodeSessions). It may be nil: no counts.
	Sessions persistence.Sessions
	// Presence is the transports' count of the devices with a session
	// (transport.Presence). When set, it is what GetDevice's online and
	// GetFleetSummary report, and DeleteDevice takes the deleted device
	// out of it; when nil, GetDevice reports the device machine's presence
	// and GetFleetSummary counts no device online.
	Presence *transport.Presence
}

// server holds what every service shares.
type server struct {
	reg        persistence.Registry
	engine     *actors.Engine
	store      persistence.EventStore
	log        *slog.Logger
	clock      clock.Clock
	presence   *transport.Presence
	registered *registered
}

// NewHandler returns the API handler: the Connect (and gRPC, gRPC-Web)
// handlers of ProductService, DeviceService, GroupService, PackageService
// and, when Deps.Engine is set, TaskService and ClusterService on one mux, with gRPC server
// reflection, all behind the bearer-token check of RequireToken (or, with
// Deps.Console, ConsoleAuth.Require). It counts the registry's devices
// once, for GetFleetSummary (a walk of the registry: its one cost that
// grows with the fleet).
func NewHandler(d Deps) (http.Handler, error) {
	if d.Registry == nil {
		return nil, errors.New("rpc: Deps.Registry is nil")
	}
	if d.Token == "" {
		return nil, errors.New("rpc: Deps.Token is empty")
	}
	if d.Console != nil && d.Console.token != sha256.Sum256([]byte(d.Token)) {
		return nil, errors.New("rpc: Deps.Console checks another token than Deps.Token")
	}
	s := newServer(d)
	var err error
	if s.registered, err = countRegistered(context.Background(), d.Registry); err != nil {
		return nil, err
	}
	opts := []connect.HandlerOption{
		connect.WithReadMaxBytes(MaxRequestBytes),
		connect.WithRecover(func(_ context.Context, spec connect.Spec, _ http.Header, p any) error {
			s.log.Error("rpc: handler panicked", "procedure", spec.Procedure, "panic", fmt.Sprint(p))
			return connect.NewError(connect.CodeInternal, errInternal)
		}),
		connect.WithInterceptors(plainErrors{}),
	}
	mux := http.NewServeMux()
	mux.Handle(otafleetv1connect.NewProductServiceHandler(&productServer{server: s}, opts...))
	mux.Handle(otafleetv1connect.NewDeviceServiceHandler(&deviceServer{server: s}, opts...))
	mux.Handle(otafleetv1connect.NewGroupServiceHandler(&groupServer{server: s}, opts...))
	ps := &packageServer{server: s, chunks: newChunkUploads()}
	if d.Done != nil {
		go func() {
			<-d.Done
			ps.closeUploads()
		}()
	}
	mux.Handle(otafleetv1connect.NewPackageServiceHandler(ps, opts...))
	services := []string{
		otafleetv1connect.ProductServiceName, otafleetv1connect.DeviceServiceName,
		otafleetv1connect.GroupServiceName, otafleetv1connect.PackageServiceName,
	}
	if d.Engine != nil {
		mux.Handle(otafleetv1connect.NewTaskServiceHandler(&taskServer{server: s}, opts...))
		mux.Handle(otafleetv1connect.NewClusterServiceHandler(&clusterServer{server: s, sessions: d.Sessions}, opts...))
		services = append(services, otafleetv1connect.TaskServiceName, otafleetv1connect.ClusterServiceName)
	}
	// gRPC server reflection (grpcurl, buf curl), behind the same token. It
	// describes the health service too, which the caller serves.
	reflector := grpcreflect.NewStaticReflector(append(services, grpchealth.HealthV1ServiceName)...)
	ropts := []connect.HandlerOption{connect.WithReadMaxBytes(64 << 10)}
	mux.Handle(grpcreflect.NewHandlerV1(reflector, ropts...))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector, ropts...))
	if d.Console != nil {
		return d.Console.Require(mux), nil
	}
	return RequireToken(d.Token, mux), nil
}

func newServer(d Deps) *server {
	s := &server{reg: d.Registry, engine: d.Engine, store: d.Store, log: d.Logger, clock: d.Clock, presence: d.Presence, registered: &registered{n: map[string]int64{}}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.clock == nil {
		s.clock = clock.Real()
	}
	return s
}

// newID returns a fresh server-assigned ID: 24 lowercase hex digits.
func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// checkID validates a client-supplied record ID.
func checkID(field, id string) error {
	if err := persistence.ValidateID(id); err != nil {
		return invalid(field, "%v", err)
	}
	return nil
}

// checkText validates a display name or free text: at most maxRunes
// characters (at least one when required), valid UTF-8; control characters
// are refused unless allowControl.
func checkText(field, s string, required bool, maxRunes int, allowControl bool) error {
	if required && s == "" {
		return invalid(field, "required")
	}
	if !utf8.ValidString(s) {
		return invalid(field, "not valid UTF-8")
	}
	if n := utf8.RuneCountInString(s); n > maxRunes {
		return invalid(field, "%d characters, at most %d", n, maxRunes)
	}
	if !allowControl {
		for _, r := range s {
			if unicode.IsControl(r) {
				return invalid(field, "contains the control character %U", r)
			}
		}
	}
	return nil
}

// listPage fetches one page of records after token: list(after, limit)
// returns at most limit records in ID order. The next-page token is the last
// record's ID when more records follow, probed with a one-record listing.
func listPage[T any](ctx context.Context, pageSize int32, token string, list func(context.Context, string, int) ([]T, error), id func(T) string) ([]T, string, error) {
	limit := persistence.ListLimit(int(pageSize))
	recs, err := list(ctx, token, limit)
	if err != nil {
		return nil, "", err
	}
	if len(recs) < limit {
		return recs, "", nil
	}
	last := id(recs[len(recs)-1])
	more, err := list(ctx, last, 1)
	if err != nil {
		return nil, "", err
	}
	if len(more) == 0 {
		return recs, "", nil
	}
	return recs, last, nil
}

// checkDeviceID validates the ID of a device being created (see
// persistence.ValidateDeviceID). Calls naming an existing device use checkID,
// so that a device created before the rule can still be read and deleted.
func checkDeviceID(field, id string) error {
	if err := persistence.ValidateDeviceID(id); err != nil {
		return invalid(field, "%v", err)
	}
	return nil
}

// checkPageToken validates a page token: empty or a record ID.
func checkPageToken(token string) error {
	if token == "" {
		return nil
	}
	if err := persistence.ValidateID(token); err != nil {
		return invalid("page_token", "not a token this server returned")
	}
	return nil
}

// product returns the product a request names in its product_id field;
// not_found names the field.
func (s *server) product(ctx context.Context, op, id string) (persistence.Product, error) {
	p, err := s.reg.GetProduct(ctx, id)
	if errors.Is(err, persistence.ErrNotFound) {
		return p, notFound("product_id", "product", id)
	}
	return p, toConnect(s.log, op, err)
}
