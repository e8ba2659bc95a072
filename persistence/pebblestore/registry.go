package pebblestore

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/registrypb"
	"google.golang.org/protobuf/proto"
)

// encodeRecord wraps m's bytes in the persistence envelope.
func encodeRecord(typ uint32, m proto.Message) ([]byte, error) {
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, err
	}
	return persistence.EncodeEvent(persistence.Event{Type: typ, Version: recVersion, Payload: b}), nil
}

// decodeRecord parses the record at key into m.
func decodeRecord(key, v []byte, typ uint32, m proto.Message) error {
	e, err := persistence.DecodeEvent(0, v)
	if err == nil && e.Type != typ {
		err = fmt.Errorf("record of type %d where type %d was expected", e.Type, typ)
	}
	if err == nil && e.Version != recVersion {
		err = fmt.Errorf("record version %d is unknown to this build (it reads %d)", e.Version, recVersion)
	}
	if err == nil {
		if perr := proto.Unmarshal(e.Payload, m); perr != nil {
			err = fmt.Errorf("record does not decode: %v", perr)
		}
	}
	if err != nil {
		return &persistence.CorruptError{Key: bytes.Clone(key), Reason: err.Error()}
	}
	return nil
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func notFound(what, id string) error {
	return fmt.Errorf("%w: %s %q", persistence.ErrNotFound, what, id)
}

// getRecord reads and decodes the record at prefix+id; ErrNotFound names
// what.
func (s *Store) getRecord(prefix []byte, what, id string, typ uint32, m proto.Message) error {
	k := join(prefix, id)
	v, ok, err := s.get(k)
	if err != nil {
		return err
	}
	if !ok {
		return notFound(what, id)
	}
	return decodeRecord(k, v, typ, m)
}

// exists reports whether key is present.
func (s *Store) exists(key []byte) (bool, error) {
	_, ok, err := s.get(key)
	return ok, err
}

// firstUnder returns the first key with prefix, nil if none.
func (s *Store) firstUnder(prefix []byte) ([]byte, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return nil, s.readErr(prefix, err)
	}
	var k []byte
	if it.First() {
		k = bytes.Clone(it.Key())
	}
	if err := firstErr(it.Error(), it.Close()); err != nil {
		return nil, s.readErr(prefix, err)
	}
	return k, nil
}

// list calls each with the records under prefix after `after`, at most
// persistence.ListLimit(limit) of them.
func (s *Store) list(ctx context.Context, prefix []byte, after string, limit int, each func(k, v []byte) error) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	lower := afterID(prefix, after)
	it, err := s.db.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return s.readErr(lower, err)
	}
	n := persistence.ListLimit(limit)
	err = func() error {
		for valid := it.First(); valid && n > 0; valid = it.Next() {
			v, err := it.ValueAndErr()
			if err != nil {
				return s.readErr(it.Key(), err)
			}
			if err := each(it.Key(), v); err != nil {
				return err
			}
			n--
		}
		return nil
	}()
	if ierr := it.Error(); err == nil && ierr != nil {
		err = s.readErr(lower, ierr)
	}
	return firstErr(err, it.Close())
}

// write commits a registry batch built by fill, synced, under the registry
// lock.
func (s *Store) write(ctx context.Context, fill func(b *pebble.Batch) error) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	s.regMu.Lock()
	defer s.regMu.Unlock()
	b := s.db.NewBatch()
	defer b.Close()
	if err := fill(b); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.commit(b, pebble.Sync)
}

// Products.

func productRecord(p persistence.Product) *registrypb.Product {
	return &registrypb.Product{
		Id: p.ID, Name: p.Name, Protocol: registrypb.Protocol(p.Protocol),
		SoftwarePcp: p.SoftwarePCP, SkipVersionCheck: p.SkipVersionCheck, CreatedUnixNano: nanos(p.Created),
		Lwm2MSecurity: registrypb.Lwm2MSecurity(p.LwM2MSecurity),
	}
}

func productFrom(r *registrypb.Product) persistence.Product {
	return persistence.Product{
		ID: r.Id, Name: r.Name, Protocol: persistence.Protocol(r.Protocol),
		SoftwarePCP: r.SoftwarePcp, SkipVersionCheck: r.SkipVersionCheck, Created: fromNanos(r.CreatedUnixNano),
		LwM2MSecurity: persistence.LwM2MSecurity(r.Lwm2MSecurity),
	}
}

// PutProduct implements persistence.Registry.
func (s *Store) PutProduct(ctx context.Context, p persistence.Product) error {
	if err := persistence.ValidateProduct(p); err != nil {
		return err
	}
	v, err := encodeRecord(recProduct, productRecord(p))
	if err != nil {
		return err
	}
	return s.write(ctx, func(b *pebble.Batch) error {
		return b.Set(join(prefixProduct, p.ID), v, nil)
	})
}

// GetProduct implements persistence.Registry.
func (s *Store) GetProduct(ctx context.Context, id string) (persistence.Product, error) {
	if err := persistence.ValidateID(id); err != nil {
		return persistence.Product{}, err
	}
	if err := s.enter(ctx); err != nil {
		return persistence.Product{}, err
	}
	defer s.exit()
	var r registrypb.Product
	if err := s.getRecord(prefixProduct, "product", id, recProduct, &r); err != nil {
		return persistence.Product{}, err
	}
	return productFrom(&r), nil
}

// ListProducts implements persistence.Registry.
func (s *Store) ListProducts(ctx context.Context, after string, limit int) ([]persistence.Product, error) {
	var out []persistence.Product
	err := s.list(ctx, prefixProduct, after, limit, func(k, v []byte) error {
		var r registrypb.Product
		if err := decodeRecord(k, v, recProduct, &r); err != nil {
			return err
		}
		out = append(out, productFrom(&r))
		return nil
	})
	return out, err
}

// DeleteProduct implements persistence.Registry: refused with
// persistence.ErrInUse while devices or packages reference the product.
func (s *Store) DeleteProduct(ctx context.Context, id string) error {
	if err := persistence.ValidateID(id); err != nil {
		return err
	}
	k := join(prefixProduct, id)
	return s.write(ctx, func(b *pebble.Batch) error {
		if ok, err := s.exists(k); err != nil || !ok {
			return firstErr(err, notFound("product", id))
		}
		for _, ix := range []struct {
			prefix []byte
			what   string
		}{{prefixProductDevs, "device"}, {prefixProductPkgs, "package"}} {
			p := indexPrefix(ix.prefix, id)
			first, err := s.firstUnder(p)
			if err != nil {
				return err
			}
			if first != nil {
				return fmt.Errorf("%w: product %q has %ss (%s %q)", persistence.ErrInUse, id, ix.what, ix.what, first[len(p):])
			}
		}
		return b.Delete(k, nil)
	})
}

// Devices.

func deviceFrom(r *registrypb.Device) persistence.Device {
	return persistence.Device{
		ID: r.Id, ProductID: r.ProductId,
		HasSecret: len(r.SealedSecret) > 0, HasPSK: len(r.SealedPsk) > 0,
		Created: fromNanos(r.CreatedUnixNano),
	}
}

// deviceRecord seals d's credentials; empty ones are taken from old (nil if
// the device is new).
func deviceRecord(sl sealer, d persistence.Device, old *registrypb.Device) (*registrypb.Device, error) {
	r := &registrypb.Device{Id: d.ID, ProductId: d.ProductID, CreatedUnixNano: nanos(d.Created)}
	var err error
	if d.Secret != "" {
		if r.SealedSecret, err = sl.Seal([]byte(d.Secret), "secret/"+d.ID); err != nil {
			return nil, err
		}
	} else if old != nil {
		r.SealedSecret = old.SealedSecret
	}
	if len(d.PSK) > 0 {
		if r.SealedPsk, err = sl.Seal(d.PSK, "psk/"+d.ID); err != nil {
			return nil, err
		}
	} else if old != nil {
		r.SealedPsk = old.SealedPsk
	}
	return r, nil
}

// PutDevice implements persistence.Registry.
func (s *Store) PutDevice(ctx context.Context, d persistence.Device) error {
	if err := persistence.ValidateDevice(d); err != nil {
		return err
	}
	sl, err := s.sealer()
	if err != nil {
		return err
	}
	return s.write(ctx, func(b *pebble.Batch) error {
		if ok, err := s.exists(join(prefixProduct, d.ProductID)); err != nil || !ok {
			return firstErr(err, fmt.Errorf("device %q: %w", d.ID, notFound("product", d.ProductID)))
		}
		k := join(prefixDevice, d.ID)
		var old *registrypb.Device
		if v, ok, err := s.get(k); err != nil {
			return err
		} else if ok {
			old = &registrypb.Device{}
			if err := decodeRecord(k, v, recDevice, old); err != nil {
				return err
			}
			if old.ProductId != d.ProductID {
				if err := b.Delete(join(prefixProductDevs, old.ProductId, d.ID), nil); err != nil {
					return err
				}
			}
		}
		r, err := deviceRecord(sl, d, old)
		if err != nil {
			return err
		}
		v, err := encodeRecord(recDevice, r)
		if err != nil {
			return err
		}
		return firstErr(b.Set(k, v, nil), b.Set(join(prefixProductDevs, d.ProductID, d.ID), nil, nil))
	})
}

// CreateDevices implements persistence.Registry: one synced batch.
func (s *Store) CreateDevices(ctx context.Context, ds []persistence.Device) error {
	if err := persistence.ValidateNewDevices(ds); err != nil {
		return err
	}
	sl, err := s.sealer()
	if err != nil {
		return err
	}
	return s.write(ctx, func(b *pebble.Batch) error {
		products := map[string]bool{}
		for _, d := range ds {
			if !products[d.ProductID] {
				if ok, err := s.exists(join(prefixProduct, d.ProductID)); err != nil || !ok {
					return firstErr(err, fmt.Errorf("device %q: %w", d.ID, notFound("product", d.ProductID)))
				}
				products[d.ProductID] = true
			}
			k := join(prefixDevice, d.ID)
			if ok, err := s.exists(k); err != nil || ok {
				return firstErr(err, fmt.Errorf("%w: device %q", persistence.ErrExists, d.ID))
			}
			r, err := deviceRecord(sl, d, nil)
			if err != nil {
				return err
			}
			v, err := encodeRecord(recDevice, r)
			if err != nil {
				return err
			}
			if err := firstErr(b.Set(k, v, nil), b.Set(join(prefixProductDevs, d.ProductID, d.ID), nil, nil)); err != nil {
				return err
			}
		}
		return nil
	})
}

// device reads a device's record.
func (s *Store) device(ctx context.Context, id string) (*registrypb.Device, error) {
	if err := persistence.ValidateID(id); err != nil {
		return nil, err
	}
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.exit()
	var r registrypb.Device
	if err := s.getRecord(prefixDevice, "device", id, recDevice, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// GetDevice implements persistence.Registry.
func (s *Store) GetDevice(ctx context.Context, id string) (persistence.Device, error) {
	r, err := s.device(ctx, id)
	if err != nil {
		return persistence.Device{}, err
	}
	return deviceFrom(r), nil
}

// ListDevices implements persistence.Registry.
func (s *Store) ListDevices(ctx context.Context, after string, limit int) ([]persistence.Device, error) {
	var out []persistence.Device
	err := s.list(ctx, prefixDevice, after, limit, func(k, v []byte) error {
		var r registrypb.Device
		if err := decodeRecord(k, v, recDevice, &r); err != nil {
			return err
		}
		out = append(out, deviceFrom(&r))
		return nil
	})
	return out, err
}

// DeleteDevice implements persistence.Registry.
func (s *Store) DeleteDevice(ctx context.Context, id string) error {
	if err := persistence.ValidateID(id); err != nil {
		return err
	}
	k := join(prefixDevice, id)
	return s.write(ctx, func(b *pebble.Batch) error {
		v, ok, err := s.get(k)
		if err != nil || !ok {
			return firstErr(err, notFound("device", id))
		}
		var r registrypb.Device
		if err := decodeRecord(k, v, recDevice, &r); err != nil {
			return err
		}
		return firstErr(b.Delete(k, nil), b.Delete(join(prefixProductDevs, r.ProductId, id), nil))
	})
}

// DeviceCredentials implements persistence.Registry. A sealed value that
// does not open is a *persistence.CorruptError.
func (s *Store) DeviceCredentials(ctx context.Context, id string) (persistence.Credentials, error) {
	r, err := s.device(ctx, id)
	if err != nil {
		return persistence.Credentials{}, err
	}
	sl, err := s.sealer()
	if err != nil {
		return persistence.Credentials{}, err
	}
	secret, err := sl.Open(r.SealedSecret, "secret/"+id)
	if err != nil {
		return persistence.Credentials{}, &persistence.CorruptError{Key: join(prefixDevice, id), Reason: err.Error()}
	}
	psk, err := sl.Open(r.SealedPsk, "psk/"+id)
	if err != nil {
		return persistence.Credentials{}, &persistence.CorruptError{Key: join(prefixDevice, id), Reason: err.Error()}
	}
	return persistence.Credentials{Secret: string(secret), PSK: psk, ProductID: r.ProductId}, nil
}

// Groups.

func groupFrom(r *registrypb.Group) persistence.Group {
	return persistence.Group{ID: r.Id, Name: r.Name, DeviceIDs: r.DeviceIds, Created: fromNanos(r.CreatedUnixNano)}
}

// PutGroup implements persistence.Registry.
func (s *Store) PutGroup(ctx context.Context, g persistence.Group) error {
	if err := persistence.ValidateGroup(g); err != nil {
		return err
	}
	v, err := encodeRecord(recGroup, &registrypb.Group{Id: g.ID, Name: g.Name, DeviceIds: g.DeviceIDs, CreatedUnixNano: nanos(g.Created)})
	if err != nil {
		return err
	}
	return s.write(ctx, func(b *pebble.Batch) error {
		return b.Set(join(prefixGroup, g.ID), v, nil)
	})
}

// GetGroup implements persistence.Registry.
func (s *Store) GetGroup(ctx context.Context, id string) (persistence.Group, error) {
	if err := persistence.ValidateID(id); err != nil {
		return persistence.Group{}, err
	}
	if err := s.enter(ctx); err != nil {
		return persistence.Group{}, err
	}
	defer s.exit()
	var r registrypb.Group
	if err := s.getRecord(prefixGroup, "group", id, recGroup, &r); err != nil {
		return persistence.Group{}, err
	}
	return groupFrom(&r), nil
}

// ListGroups implements persistence.Registry.
func (s *Store) ListGroups(ctx context.Context, after string, limit int) ([]persistence.Group, error) {
	var out []persistence.Group
	err := s.list(ctx, prefixGroup, after, limit, func(k, v []byte) error {
		var r registrypb.Group
		if err := decodeRecord(k, v, recGroup, &r); err != nil {
			return err
		}
		out = append(out, groupFrom(&r))
		return nil
	})
	return out, err
}

// DeleteGroup implements persistence.Registry.
func (s *Store) DeleteGroup(ctx context.Context, id string) error {
	return s.deleteRecord(ctx, prefixGroup, "group", id)
}

// Tasks.

func taskFrom(r *registrypb.Task) persistence.TaskRecord {
	return persistence.TaskRecord{ID: r.Id, Name: r.Name, PackageID: r.PackageId, Created: fromNanos(r.CreatedUnixNano)}
}

// PutTask implements persistence.Registry.
func (s *Store) PutTask(ctx context.Context, t persistence.TaskRecord) error {
	if err := persistence.ValidateTask(t); err != nil {
		return err
	}
	v, err := encodeRecord(recTask, &registrypb.Task{Id: t.ID, Name: t.Name, PackageId: t.PackageID, CreatedUnixNano: nanos(t.Created)})
	if err != nil {
		return err
	}
	return s.write(ctx, func(b *pebble.Batch) error {
		return b.Set(join(prefixTask, t.ID), v, nil)
	})
}

// GetTask implements persistence.Registry.
func (s *Store) GetTask(ctx context.Context, id string) (persistence.TaskRecord, error) {
	if err := persistence.ValidateID(id); err != nil {
		return persistence.TaskRecord{}, err
	}
	if err := s.enter(ctx); err != nil {
		return persistence.TaskRecord{}, err
	}
	defer s.exit()
	var r registrypb.Task
	if err := s.getRecord(prefixTask, "task", id, recTask, &r); err != nil {
		return persistence.TaskRecord{}, err
	}
	return taskFrom(&r), nil
}

// ListTasks implements persistence.Registry.
func (s *Store) ListTasks(ctx context.Context, after string, limit int) ([]persistence.TaskRecord, error) {
	var out []persistence.TaskRecord
	err := s.list(ctx, prefixTask, after, limit, func(k, v []byte) error {
		var r registrypb.Task
		if err := decodeRecord(k, v, recTask, &r); err != nil {
			return err
		}
		out = append(out, taskFrom(&r))
		return nil
	})
	return out, err
}

// DeleteTask implements persistence.Registry.
func (s *Store) DeleteTask(ctx context.Context, id string) error {
	return s.deleteRecord(ctx, prefixTask, "task", id)
}

// deleteRecord deletes an unindexed record.
func (s *Store) deleteRecord(ctx context.Context, prefix []byte, what, id string) error {
	if err := persistence.ValidateID(id); err != nil {
		return err
	}
	k := join(prefix, id)
	return s.write(ctx, func(b *pebble.Batch) error {
		if ok, err := s.exists(k); err != nil || !ok {
			return firstErr(err, notFound(what, id))
		}
		return b.Delete(k, nil)
	})
}

// Packages.

func packageRecord(p persistence.Package) *registrypb.Package {
	return &registrypb.Package{
		Id: p.ID, ProductId: p.ProductID, Type: registrypb.PackageType(p.Type), Version: p.Version,
		SourceVersions: p.SourceVersions, FileName: p.FileName, Size: p.Size, Sha256: p.SHA256[:],
		Description: p.Description, CustomInfo: p.CustomInfo, OmitSign: p.OmitSign,
		SegmentSize: p.SegmentSize, CheckCode: p.CheckCode, CreatedUnixNano: nanos(p.Created),
	}
}

func packageFrom(k []byte, r *registrypb.Package) (persistence.Package, error) {
	p := persistence.Package{
		ID: r.Id, ProductID: r.ProductId, Type: persistence.PackageType(r.Type), Version: r.Version,
		SourceVersions: slices.Clone(r.SourceVersions), FileName: r.FileName, Size: r.Size,
		Description: r.Description, CustomInfo: r.CustomInfo, OmitSign: r.OmitSign,
		SegmentSize: r.SegmentSize, CheckCode: r.CheckCode, Created: fromNanos(r.CreatedUnixNano),
	}
	if len(r.Sha256) != len(p.SHA256) {
		return p, &persistence.CorruptError{Key: bytes.Clone(k), Reason: fmt.Sprintf("SHA-256 of %d bytes", len(r.Sha256))}
	}
	copy(p.SHA256[:], r.Sha256)
	return p, nil
}

// PutPackage implements persistence.Registry.
func (s *Store) PutPackage(ctx context.Context, p persistence.Package) error {
	if err := persistence.ValidatePackage(p); err != nil {
		return err
	}
	v, err := encodeRecord(recPackage, packageRecord(p))
	if err != nil {
		return err
	}
	k := join(prefixPackage, p.ID)
	return s.write(ctx, func(b *pebble.Batch) error {
		if ok, err := s.exists(join(prefixProduct, p.ProductID)); err != nil || !ok {
			return firstErr(err, fmt.Errorf("package %q: %w", p.ID, notFound("product", p.ProductID)))
		}
		if old, ok, err := s.get(k); err != nil {
			return err
		} else if ok {
			var r registrypb.Package
			if err := decodeRecord(k, old, recPackage, &r); err != nil {
				return err
			}
			if r.ProductId != p.ProductID {
				if err := b.Delete(join(prefixProductPkgs, r.ProductId, p.ID), nil); err != nil {
					return err
				}
			}
		}
		return firstErr(b.Set(k, v, nil), b.Set(join(prefixProductPkgs, p.ProductID, p.ID), nil, nil))
	})
}

// GetPackage implements persistence.Registry.
func (s *Store) GetPackage(ctx context.Context, id string) (persistence.Package, error) {
	if err := persistence.ValidateID(id); err != nil {
		return persistence.Package{}, err
	}
	if err := s.enter(ctx); err != nil {
		return persistence.Package{}, err
	}
	defer s.exit()
	var r registrypb.Package
	if err := s.getRecord(prefixPackage, "package", id, recPackage, &r); err != nil {
		return persistence.Package{}, err
	}
	return packageFrom(join(prefixPackage, id), &r)
}

// ListPackages implements persistence.Registry.
func (s *Store) ListPackages(ctx context.Context, after string, limit int) ([]persistence.Package, error) {
	var out []persistence.Package
	err := s.list(ctx, prefixPackage, after, limit, func(k, v []byte) error {
		var r registrypb.Package
		if err := decodeRecord(k, v, recPackage, &r); err != nil {
			return err
		}
		p, err := packageFrom(k, &r)
		if err != nil {
			return err
		}
		out = append(out, p)
		return nil
	})
	return out, err
}

// DeletePackage implements persistence.Registry: allowed even while tasks
// use the package (the API layer checks); the blob stays until DeleteBlob.
func (s *Store) DeletePackage(ctx context.Context, id string) error {
	if err := persistence.ValidateID(id); err != nil {
		return err
	}
	k := join(prefixPackage, id)
	return s.write(ctx, func(b *pebble.Batch) error {
		v, ok, err := s.get(k)
		if err != nil || !ok {
			return firstErr(err, notFound("package", id))
		}
		var r registrypb.Package
		if err := decodeRecord(k, v, recPackage, &r); err != nil {
			return err
		}
		return firstErr(b.Delete(k, nil), b.Delete(join(prefixProductPkgs, r.ProductId, id), nil))
	})
}
