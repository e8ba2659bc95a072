package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"connectrpc.com/connect"

	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
)

// API is a connection to otafleet's Connect API.
type API struct {
	Products otafleetv1connect.ProductServiceClient
	Devices  otafleetv1connect.DeviceServiceClient
	Packages otafleetv1connect.PackageServiceClient
	Tasks    otafleetv1connect.TaskServiceClient

	mu       sync.Mutex
	versions map[string]string // package ID → version
}

type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

// NewAPI connects to the API at addr (host:port or an http(s) URL) with the
// bearer token: the Connect protocol over h2c for plain addresses.
func NewAPI(addr, token string) *API {
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	base = strings.TrimSuffix(base, "/")
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if strings.HasPrefix(base, "http://") {
		p := new(http.Protocols)
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = p
	}
	hc := &http.Client{Transport: bearer{token: token, next: tr}}
	opts := []connect.ClientOption{connect.WithSendMaxBytes(64 << 20), connect.WithReadMaxBytes(64 << 20)}
	return &API{
		Products: otafleetv1connect.NewProductServiceClient(hc, base, opts...),
		Devices:  otafleetv1connect.NewDeviceServiceClient(hc, base, opts...),
		Packages: otafleetv1connect.NewPackageServiceClient(hc, base, opts...),
		Tasks:    otafleetv1connect.NewTaskServiceClient(hc, base, opts...),
		versions: map[string]string{},
	}
}

// PackageVersion returns the version of a package, asking the API once per
// package: a simulated LwM2M FOTA device learns only the package's URI.
func (a *API) PackageVersion(ctx context.Context, id string) (string, error) {
	a.mu.Lock()
	v, ok := a.versions[id]
	a.mu.Unlock()
	if ok {
		return v, nil
	}
	r, err := a.Packages.GetPackage(ctx, connect.NewRequest(&v1.GetPackageRequest{PackageId: id}))
	if err != nil {
		return "", fmt.Errorf("package %s: %w", id, err)
	}
	v = r.Msg.GetPackage().GetVersion()
	a.mu.Lock()
	a.versions[id] = v
	a.mu.Unlock()
	return v, nil
}

// maxCreate is the most devices one CreateDevices call takes.
const maxCreate = 10000

// Register creates the fleet's devices in their products (products maps a
// protocol to its product ID), MQTT devices with their secret and, with
// dtls, LwM2M devices with their PSK. Devices that exist already in their
// product are left as they are, so a simulator started again with --register
// goes on; a device that exists in another product is an error
// (ErrOtherProduct) naming the device and both products, and the devices of
// its batch are not created. It returns how many devices it created.
func Register(ctx context.Context, api *API, f Fleet, products map[string]string, dtls bool) (int, error) {
	created := 0
	for _, p := range uniq(f.Protocols) {
		pid := products[p]
		if pid == "" {
			return created, fmt.Errorf("no product for the %s devices", p)
		}
		var batch []*v1.NewDevice
		flush := func() error {
			if len(batch) == 0 {
				return nil
			}
			n, err := createBatch(ctx, api, pid, batch)
			created += n
			batch = batch[:0]
			return err
		}
		for n := f.First; n < f.First+f.Devices; n++ {
			d := f.Device(n)
			if d.Protocol != p {
				continue
			}
			nd := &v1.NewDevice{DeviceId: d.ID}
			switch {
			case p == ProtoMQTT:
				nd.Secret = &d.Secret
			case dtls:
				nd.Psk = d.PSK
			}
			batch = append(batch, nd)
			if len(batch) == maxCreate {
				if err := flush(); err != nil {
					return created, err
				}
			}
		}
		if err := flush(); err != nil {
			return created, err
		}
	}
	return created, nil
}

// ErrOtherProduct: a device of the fleet exists in another product than the
// one it would be registered in.
var ErrOtherProduct = errors.New("device in another product")

// createBatch creates one call's devices; when some exist already in product
// pid it creates the others.
func createBatch(ctx context.Context, api *API, pid string, batch []*v1.NewDevice) (int, error) {
	_, err := api.Devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{ProductId: pid, Devices: batch}))
	if err == nil {
		return len(batch), nil
	}
	if connect.CodeOf(err) != connect.CodeAlreadyExists {
		return 0, fmt.Errorf("creating devices in product %s: %w", pid, err)
	}
	var missing []*v1.NewDevice
	for _, nd := range batch {
		got, err := api.Devices.GetDevice(ctx, connect.NewRequest(&v1.GetDeviceRequest{DeviceId: nd.GetDeviceId()}))
		switch {
		case connect.CodeOf(err) == connect.CodeNotFound:
			missing = append(missing, nd)
		case err != nil:
			return 0, fmt.Errorf("device %s: %w", nd.GetDeviceId(), err)
		case got.Msg.GetDevice().GetProductId() != pid:
			return 0, fmt.Errorf("%w: device %s is in product %s, not %s; pass another --id-prefix",
				ErrOtherProduct, nd.GetDeviceId(), got.Msg.GetDevice().GetProductId(), pid)
		}
	}
	if len(missing) == 0 {
		return 0, nil
	}
	if _, err := api.Devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{ProductId: pid, Devices: missing})); err != nil {
		return 0, fmt.Errorf("creating devices in product %s: %w", pid, err)
	}
	return len(missing), nil
}

func uniq(ss []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

var errNoAPI = errors.New("no API address: pass --api or --data-dir of a running server")
