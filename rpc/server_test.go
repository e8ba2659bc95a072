package rpc_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/rpc"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
)

const testToken = "test-token-0123456789"

// env is a served handler over a memstore with clients for every service.
type env struct {
	store    *blobLog
	url      string
	http     *http.Client
	products otafleetv1connect.ProductServiceClient
	devices  otafleetv1connect.DeviceServiceClient
	groups   otafleetv1connect.GroupServiceClient
	packages otafleetv1connect.PackageServiceClient
}

// blobLog is a memstore that remembers the IDs of the blobs written.
type blobLog struct {
	*memstore.Store
	mu  sync.Mutex
	ids []string
}

func (b *blobLog) WriteBlob(ctx context.Context, id string, r io.Reader, maxBytes int64) (int64, [sha256.Size]byte, error) {
	b.mu.Lock()
	b.ids = append(b.ids, id)
	b.mu.Unlock()
	return b.Store.WriteBlob(ctx, id, r, maxBytes)
}

// checkBlobs fails unless exactly the blobs of stored packages remain.
func (b *blobLog) checkBlobs(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, id := range b.ids {
		_, perr := b.GetPackage(ctx, id)
		blob, berr := b.OpenBlob(ctx, id)
		if berr == nil {
			blob.Close()
		}
		if (perr == nil) != (berr == nil) {
			t.Errorf("blob %s: package: %v, blob: %v", id, perr, berr)
		}
	}
}

// bearer adds an Authorization header to every request.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	if b.token != "" {
		r.Header.Set("Authorization", "Bearer "+b.token)
	}
	return b.next.RoundTrip(r)
}

// newEnv serves rpc.NewHandler over HTTP/1.1 and h2c and returns clients
// speaking the Connect protocol over h2c with the right token.
func newEnv(t *testing.T) *env {
	t.Helper()
	st := &blobLog{Store: memstore.New()}
	return serve(t, st, rpc.Deps{Registry: st, Token: testToken})
}

// serve serves rpc.NewHandler(d) like newEnv; st is d's registry, or nil
// when d's registry is another store.
func serve(t *testing.T, st *blobLog, d rpc.Deps) *env {
	t.Helper()
	h, err := rpc.NewHandler(d)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	e := &env{store: st, url: srv.URL}
	e.http = e.client(testToken)
	e.products = otafleetv1connect.NewProductServiceClient(e.http, e.url)
	e.devices = otafleetv1connect.NewDeviceServiceClient(e.http, e.url)
	e.groups = otafleetv1connect.NewGroupServiceClient(e.http, e.url)
	e.packages = otafleetv1connect.NewPackageServiceClient(e.http, e.url)
	return e
}

// client returns an h2c HTTP client sending token ("" for none).
func (e *env) client(token string) *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: p}
	return &http.Client{Transport: bearer{token: token, next: tr}}
}

// wantCode fails unless err is a Connect error with code.
// wantPlain fails unless err's message, as the client reads it, is want:
// in the user's words, without the Go package and kind of an error from
// below ("persistence: in use: ").
func wantPlain(t *testing.T, err error, want string) {
	t.Helper()
	ce := new(connect.Error)
	if !errors.As(err, &ce) || ce.Message() != want {
		t.Fatalf("message %q, want %q", err, want)
	}
}

func wantCode(t *testing.T, err error, code connect.Code) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", code)
	}
	if got := connect.CodeOf(err); got != code {
		t.Fatalf("got %v (%v), want %v", got, err, code)
	}
}

func (e *env) mustProduct(t *testing.T, proto v1.Protocol, pcp bool) string {
	t.Helper()
	req := &v1.CreateProductRequest{Name: "meter", Protocol: proto}
	if pcp {
		sp := v1.SoftwareProtocol_SOFTWARE_PROTOCOL_PCP
		req.SoftwareProtocol = &sp
	}
	res, err := e.products.CreateProduct(context.Background(), connect.NewRequest(req))
	if err != nil {
		t.Fatal(err)
	}
	return res.Msg.GetProduct().GetProductId()
}

func TestNewHandlerNeedsRegistryAndToken(t *testing.T) {
	if _, err := rpc.NewHandler(rpc.Deps{Token: "x"}); err == nil {
		t.Error("no registry: got no error")
	}
	if _, err := rpc.NewHandler(rpc.Deps{Registry: memstore.New()}); err == nil {
		t.Error("no token: got no error")
	}
}

func TestAuth(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, tc := range []struct{ name, token string }{{"none", ""}, {"wrong", "wrong-token"}, {"prefix", testToken[:5]}} {
		t.Run(tc.name, func(t *testing.T) {
			hc := e.client(tc.token)
			products := otafleetv1connect.NewProductServiceClient(hc, e.url)
			_, err := products.CreateProduct(ctx, connect.NewRequest(&v1.CreateProductRequest{Name: "x", Protocol: v1.Protocol_PROTOCOL_MQTT}))
			wantCode(t, err, connect.CodeUnauthenticated)
			_, err = products.ListProducts(ctx, connect.NewRequest(&v1.ListProductsRequest{}))
			wantCode(t, err, connect.CodeUnauthenticated)

			// gRPC too, and the client-streaming upload.
			grpcPkgs := otafleetv1connect.NewPackageServiceClient(hc, e.url, connect.WithGRPC())
			_, err = grpcPkgs.ListPackages(ctx, connect.NewRequest(&v1.ListPackagesRequest{}))
			wantCode(t, err, connect.CodeUnauthenticated)
			up := grpcPkgs.UploadPackage(ctx)
			_ = up.Send(&v1.UploadPackageRequest{Part: &v1.UploadPackageRequest_Chunk{Chunk: []byte("abc")}})
			_, err = up.CloseAndReceive()
			wantCode(t, err, connect.CodeUnauthenticated)

			if ps, _ := e.store.ListProducts(ctx, "", 10); len(ps) != 0 {
				t.Errorf("store has %d products", len(ps))
			}
		})
	}
	// Raw request: a clear message.
	req, _ := http.NewRequest(http.MethodPost, e.url+"/otafleet.v1.ProductService/ListProducts", strings.NewReader("{}"))
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		t.Errorf("status %d, want 401", res.StatusCode)
	}
	// TaskService is not mounted here.
	tasks := otafleetv1connect.NewTaskServiceClient(e.http, e.url)
	_, err = tasks.ListTasks(ctx, connect.NewRequest(&v1.ListTasksRequest{}))
	if !errors.As(err, new(*connect.Error)) || connect.CodeOf(err) != connect.CodeUnimplemented && connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("TaskService: %v", err)
	}
}

// newJSONProducts returns a ProductService client speaking Connect JSON
// over HTTP/1.1.
func newJSONProducts(e *env) otafleetv1connect.ProductServiceClient {
	hc := &http.Client{Transport: bearer{token: testToken, next: http.DefaultTransport}}
	return otafleetv1connect.NewProductServiceClient(hc, e.url, connect.WithProtoJSON())
}
