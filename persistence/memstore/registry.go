package memstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"slices"

	"github.com/otafleet/otafleet/persistence"
)

// list returns the values of m whose keys sort after `after`, in key order,
// at most persistence.ListLimit(limit) of them, each passed through clone.
func list[T any](m map[string]T, after string, limit int, clone func(T) T) []T {
	ids := make([]string, 0, len(m))
	for id := range m {
		if id > after {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	if n := persistence.ListLimit(limit); len(ids) > n {
		ids = ids[:n]
	}
	out := make([]T, 0, len(ids))
	for _, id := range ids {
		out = append(out, clone(m[id]))
	}
	return out
}

// get returns a copy of m[id] under the store's lock. The maps are made by New
// and never replaced, so passing one in before locking is safe.
func get[T any](s *Store, ctx context.Context, m map[string]T, what, id string, clone func(T) T) (T, error) {
	var zero T
	if err := persistence.ValidateID(id); err != nil {
		return zero, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return zero, err
	}
	v, ok := m[id]
	if !ok {
		return zero, notFound(what, id)
	}
	return clone(v), nil
}

// listLocked is list under the store's lock.
func listLocked[T any](s *Store, ctx context.Context, m map[string]T, after string, limit int, clone func(T) T) ([]T, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	return list(m, after, limit, clone), nil
}

// remove deletes m[id] under the store's lock, unless inUse (when set) says
// the record is still referenced.
func remove[T any](s *Store, ctx context.Context, m map[string]T, what, id string, inUse func() error) error {
	if err := persistence.ValidateID(id); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return err
	}
	if _, ok := m[id]; !ok {
		return notFound(what, id)
	}
	if inUse != nil {
		if err := inUse(); err != nil {
			return err
		}
	}
	delete(m, id)
	return nil
}

func notFound(what, id string) error {
	return fmt.Errorf("%w: %s %q", persistence.ErrNotFound, what, id)
}

func cloneProduct(p persistence.Product) persistence.Product { return p }

// publicDevice is d as reads return it: credentials replaced by flags.
func publicDevice(d persistence.Device) persistence.Device {
	d.HasSecret, d.HasPSK = d.Secret != "", len(d.PSK) > 0
	d.Secret, d.PSK = "", nil
	return d
}

func cloneGroup(g persistence.Group) persistence.Group {
	g.DeviceIDs = slices.Clone(g.DeviceIDs)
	return g
}

func clonePackage(p persistence.Package) persistence.Package {
	p.SourceVersions = slices.Clone(p.SourceVersions)
	return p
}

// PutProduct implements persistence.Registry.
func (s *Store) PutProduct(ctx context.Context, p persistence.Product) error {
	if err := persistence.ValidateProduct(p); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return err
	}
	s.products[p.ID] = p
	return nil
}

// GetProduct implements persistence.Registry.
func (s *Store) GetProduct(ctx context.Context, id string) (persistence.Product, error) {
	return get(s, ctx, s.products, "product", id, cloneProduct)
}

// ListProducts implements persistence.Registry.
func (s *Store) ListProducts(ctx context.Context, after string, limit int) ([]persistence.Product, error) {
	return listLocked(s, ctx, s.products, after, limit, cloneProduct)
}

// DeleteProduct implements persistence.Registry.
func (s *Store) DeleteProduct(ctx context.Context, id string) error {
	return remove(s, ctx, s.products, "product", id, func() error {
		for _, d := range s.devices {
			if d.ProductID == id {
				return fmt.Errorf("%w: product %q has devices (device %q)", persistence.ErrInUse, id, d.ID)
			}
		}
		for _, p := range s.packages {
			if p.ProductID == id {
				return fmt.Errorf("%w: product %q has packages (package %q)", persistence.ErrInUse, id, p.ID)
			}
		}
		return nil
	})
}

// PutDevice implements persistence.Registry.
func (s *Store) PutDevice(ctx context.Context, d persistence.Device) error {
	if err := persistence.ValidateDevice(d); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return err
	}
	if _, ok := s.products[d.ProductID]; !ok {
		return fmt.Errorf("device %q: %w", d.ID, notFound("product", d.ProductID))
	}
	old := s.devices[d.ID]
	if d.Secret == "" {
		d.Secret = old.Secret
	}
	if len(d.PSK) == 0 {
		d.PSK = old.PSK
	}
	d.PSK = slices.Clone(d.PSK)
	d.HasSecret, d.HasPSK = false, false
	s.devices[d.ID] = d
	return nil
}

// CreateDevices implements persistence.Registry.
func (s *Store) CreateDevices(ctx context.Context, ds []persistence.Device) error {
	if err := persistence.ValidateNewDevices(ds); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return err
	}
	for _, d := range ds {
		if _, ok := s.products[d.ProductID]; !ok {
			return fmt.Errorf("device %q: %w", d.ID, notFound("product", d.ProductID))
		}
		if _, ok := s.devices[d.ID]; ok {
			return fmt.Errorf("%w: device %q", persistence.ErrExists, d.ID)
		}
	}
	for _, d := range ds {
		d.PSK = slices.Clone(d.PSK)
		d.HasSecret, d.HasPSK = false, false
		s.devices[d.ID] = d
	}
	return nil
}

// GetDevice implements persistence.Registry.
func (s *Store) GetDevice(ctx context.Context, id string) (persistence.Device, error) {
	d, err := s.device(ctx, id)
	return publicDevice(d), err
}

func (s *Store) device(ctx context.Context, id string) (persistence.Device, error) {
	return get(s, ctx, s.devices, "device", id, func(d persistence.Device) persistence.Device { return d })
}

// ListDevices implements persistence.Registry.
func (s *Store) ListDevices(ctx context.Context, after string, limit int) ([]persistence.Device, error) {
	return listLocked(s, ctx, s.devices, after, limit, publicDevice)
}

// DeleteDevice implements persistence.Registry.
func (s *Store) DeleteDevice(ctx context.Context, id string) error {
	return remove(s, ctx, s.devices, "device", id, nil)
}

// DeviceCredentials implements persistence.Registry.
func (s *Store) DeviceCredentials(ctx context.Context, id string) (persistence.Credentials, error) {
	d, err := s.device(ctx, id)
	if err != nil {
		return persistence.Credentials{}, err
	}
	return persistence.Credentials{Secret: d.Secret, PSK: slices.Clone(d.PSK), ProductID: d.ProductID}, nil
}

// PutGroup implements persistence.Registry.
func (s *Store) PutGroup(ctx context.Context, g persistence.Group) error {
	if err := persistence.ValidateGroup(g); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return err
	}
	s.groups[g.ID] = cloneGroup(g)
	return nil
}

// GetGroup implements persistence.Registry.
func (s *Store) GetGroup(ctx context.Context, id string) (persistence.Group, error) {
	return get(s, ctx, s.groups, "group", id, cloneGroup)
}

// ListGroups implements persistence.Registry.
func (s *Store) ListGroups(ctx context.Context, after string, limit int) ([]persistence.Group, error) {
	return listLocked(s, ctx, s.groups, after, limit, cloneGroup)
}

// DeleteGroup implements persistence.Registry.
func (s *Store) DeleteGroup(ctx context.Context, id string) error {
	return remove(s, ctx, s.groups, "group", id, nil)
}

func cloneTask(t persistence.TaskRecord) persistence.TaskRecord { return t }

// PutTask implements persistence.Registry.
func (s *Store) PutTask(ctx context.Context, t persistence.TaskRecord) error {
	if err := persistence.ValidateTask(t); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return err
	}
	s.tasks[t.ID] = t
	return nil
}

// GetTask implements persistence.Registry.
func (s *Store) GetTask(ctx context.Context, id string) (persistence.TaskRecord, error) {
	return get(s, ctx, s.tasks, "task", id, cloneTask)
}

// ListTasks implements persistence.Registry.
func (s *Store) ListTasks(ctx context.Context, after string, limit int) ([]persistence.TaskRecord, error) {
	return listLocked(s, ctx, s.tasks, after, limit, cloneTask)
}

// DeleteTask implements persistence.Registry.
func (s *Store) DeleteTask(ctx context.Context, id string) error {
	return remove(s, ctx, s.tasks, "task", id, nil)
}

// PutPackage implements persistence.Registry.
func (s *Store) PutPackage(ctx context.Context, p persistence.Package) error {
	if err := persistence.ValidatePackage(p); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return err
	}
	if _, ok := s.products[p.ProductID]; !ok {
		return fmt.Errorf("package %q: %w", p.ID, notFound("product", p.ProductID))
	}
	s.packages[p.ID] = clonePackage(p)
	return nil
}

// GetPackage implements persistence.Registry.
func (s *Store) GetPackage(ctx context.Context, id string) (persistence.Package, error) {
	return get(s, ctx, s.packages, "package", id, clonePackage)
}

// ListPackages implements persistence.Registry.
func (s *Store) ListPackages(ctx context.Context, after string, limit int) ([]persistence.Package, error) {
	return listLocked(s, ctx, s.packages, after, limit, clonePackage)
}

// DeletePackage implements persistence.Registry.
func (s *Store) DeletePackage(ctx context.Context, id string) error {
	return remove(s, ctx, s.packages, "package", id, nil)
}

// blob is a stored blob: immutable once written.
type blob struct {
	data []byte
	sum  [sha256.Size]byte
}

// WriteBlob implements persistence.Registry. Unlike pebblestore it holds the
// blob in memory.
func (s *Store) WriteBlob(ctx context.Context, id string, r io.Reader, maxBytes int64) (int64, [sha256.Size]byte, error) {
	var none [sha256.Size]byte
	if err := persistence.ValidateID(id); err != nil {
		return 0, none, err
	}
	if maxBytes < 0 {
		return 0, none, fmt.Errorf("%w: blob %q: negative maxBytes %d", persistence.ErrInvalid, id, maxBytes)
	}
	s.mu.Lock()
	if err := s.check(ctx); err != nil {
		s.mu.Unlock()
		return 0, none, err
	}
	if _, ok := s.blobs[id]; ok || s.writing[id] {
		s.mu.Unlock()
		return 0, none, fmt.Errorf("%w: blob %q", persistence.ErrExists, id)
	}
	s.writing[id] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.writing, id)
		s.mu.Unlock()
	}()

	var buf bytes.Buffer
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(&buf, h), &ctxReader{ctx: ctx, r: io.LimitReader(r, maxBytes+1)})
	if err != nil {
		return 0, none, fmt.Errorf("blob %q: %w", id, err)
	}
	if n > maxBytes {
		return 0, none, fmt.Errorf("%w: blob %q is longer than %d bytes", persistence.ErrTooLarge, id, maxBytes)
	}
	b := &blob{data: buf.Bytes()}
	h.Sum(b.sum[:0])
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return 0, none, err
	}
	s.blobs[id] = b
	return n, b.sum, nil
}

// ctxReader stops a copy when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// OpenBlob implements persistence.Registry.
func (s *Store) OpenBlob(ctx context.Context, id string) (persistence.Blob, error) {
	if err := persistence.ValidateID(id); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	b, ok := s.blobs[id]
	if !ok {
		return nil, notFound("blob", id)
	}
	return &openBlob{s: s, b: b, r: bytes.NewReader(b.data)}, nil
}

// DeleteBlob implements persistence.Registry.
func (s *Store) DeleteBlob(ctx context.Context, id string) error {
	if err := persistence.ValidateID(id); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return err
	}
	if _, ok := s.blobs[id]; !ok {
		return notFound("blob", id)
	}
	delete(s.blobs, id)
	return nil
}

// errBlobClosed is returned by reads of a closed Blob.
var errBlobClosed = fmt.Errorf("%w (blob closed)", persistence.ErrClosed)

// openBlob is a Blob over a stored blob's bytes.
type openBlob struct {
	s      *Store
	b      *blob
	r      *bytes.Reader // offset for Read and Seek
	closed bool          // guarded by s.mu
}

func (o *openBlob) usable() error {
	o.s.mu.Lock()
	defer o.s.mu.Unlock()
	if o.s.closed {
		return persistence.ErrClosed
	}
	if o.closed {
		return errBlobClosed
	}
	return nil
}

func (o *openBlob) ReadAt(p []byte, off int64) (int, error) {
	if err := o.usable(); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("%w: negative offset %d", persistence.ErrInvalid, off)
	}
	return bytes.NewReader(o.b.data).ReadAt(p, off)
}

func (o *openBlob) Read(p []byte) (int, error) {
	if err := o.usable(); err != nil {
		return 0, err
	}
	return o.r.Read(p)
}

func (o *openBlob) Seek(offset int64, whence int) (int64, error) {
	if err := o.usable(); err != nil {
		return 0, err
	}
	return o.r.Seek(offset, whence)
}

func (o *openBlob) Size() int64               { return int64(len(o.b.data)) }
func (o *openBlob) SHA256() [sha256.Size]byte { return o.b.sum }

func (o *openBlob) Close() error {
	o.s.mu.Lock()
	defer o.s.mu.Unlock()
	o.closed = true
	return nil
}
