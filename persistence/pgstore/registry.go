package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/otafleet/otafleet/persistence"
)

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

// get runs a one-row query and scans it with scan; ErrNotFound names what.
func (s *Store) get(ctx context.Context, what, id, query string, scan func(pgx.Row) error) error {
	if err := persistence.ValidateID(id); err != nil {
		return err
	}
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	err := scan(s.pool.QueryRow(ctx, query, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return notFound(what, id)
	}
	if err != nil {
		return s.corruptOr(ctx, "reading "+what+" "+id, err)
	}
	return nil
}

// list runs a paged listing query ($1: after, $2: limit) and collects its
// rows with scan.
func list[T any](ctx context.Context, s *Store, what, query, after string, limit int, scan func(pgx.CollectableRow) (T, error)) ([]T, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.exit()
	rows, err := s.pool.Query(ctx, query, after, persistence.ListLimit(limit))
	if err != nil {
		return nil, s.dbErr("listing "+what, err)
	}
	out, err := pgx.CollectRows(rows, scan)
	if err != nil {
		return nil, s.corruptOr(ctx, "listing "+what, err)
	}
	return out, nil
}

// exec runs a write.
func (s *Store) exec(ctx context.Context, what, query string, args ...any) (int64, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	defer s.exit()
	tag, err := s.pool.Exec(ctx, query, args...)
	if err != nil {
		return 0, s.dbErr(what, err)
	}
	return tag.RowsAffected(), nil
}

// deleteRow deletes the row of id from table; ErrNotFound names what.
func (s *Store) deleteRow(ctx context.Context, table, what, id string) error {
	if err := persistence.ValidateID(id); err != nil {
		return err
	}
	n, err := s.exec(ctx, "deleting "+what+" "+id, `DELETE FROM `+table+` WHERE id = $1`, id)
	if err == nil && n == 0 {
		err = notFound(what, id)
	}
	return err
}

// Products.

const productColumns = `id, name, protocol, software_pcp, skip_version_check, lwm2m_security, created`

func scanProduct(row pgx.CollectableRow) (persistence.Product, error) { return scanProductRow(row) }

func scanProductRow(row pgx.Row) (persistence.Product, error) {
	var p persistence.Product
	var created int64
	err := row.Scan(&p.ID, &p.Name, &p.Protocol, &p.SoftwarePCP, &p.SkipVersionCheck, &p.LwM2MSecurity, &created)
	p.Created = fromNanos(created)
	return p, err
}

// PutProduct implements persistence.Registry.
func (s *Store) PutProduct(ctx context.Context, p persistence.Product) error {
	if err := persistence.ValidateProduct(p); err != nil {
		return err
	}
	_, err := s.exec(ctx, "putting product "+p.ID, `
		INSERT INTO products (`+productColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (id) DO UPDATE SET name = excluded.name, protocol = excluded.protocol,
			software_pcp = excluded.software_pcp, skip_version_check = excluded.skip_version_check,
			lwm2m_security = excluded.lwm2m_security, created = excluded.created`,
		p.ID, p.Name, int32(p.Protocol), p.SoftwarePCP, p.SkipVersionCheck, int32(p.LwM2MSecurity), nanos(p.Created))
	return err
}

// GetProduct implements persistence.Registry.
func (s *Store) GetProduct(ctx context.Context, id string) (persistence.Product, error) {
	var p persistence.Product
	err := s.get(ctx, "product", id, `SELECT `+productColumns+` FROM products WHERE id = $1`, func(row pgx.Row) (err error) {
		p, err = scanProductRow(row)
		return err
	})
	return p, err
}

// ListProducts implements persistence.Registry.
func (s *Store) ListProducts(ctx context.Context, after string, limit int) ([]persistence.Product, error) {
	return list(ctx, s, "products", `SELECT `+productColumns+` FROM products WHERE id > $1 ORDER BY id LIMIT $2`, after, limit, scanProduct)
}

// DeleteProduct implements persistence.Registry: refused with
// persistence.ErrInUse while devices or packages reference the product
// (the foreign keys hold it against writers racing the check).
func (s *Store) DeleteProduct(ctx context.Context, id string) error {
	if err := persistence.ValidateID(id); err != nil {
		return err
	}
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var locked string
		if err := tx.QueryRow(ctx, `SELECT id FROM products WHERE id = $1 FOR UPDATE`, id).Scan(&locked); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return notFound("product", id)
			}
			return err
		}
		for _, ix := range []struct{ table, what string }{{"devices", "device"}, {"packages", "package"}} {
			var user string
			err := tx.QueryRow(ctx, `SELECT id FROM `+ix.table+` WHERE product_id = $1 ORDER BY id LIMIT 1`, id).Scan(&user)
			if err == nil {
				return fmt.Errorf("%w: product %q has %ss (%s %q)", persistence.ErrInUse, id, ix.what, ix.what, user)
			}
			if !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
		}
		_, err := tx.Exec(ctx, `DELETE FROM products WHERE id = $1`, id)
		return err
	})
	switch {
	case err == nil, errors.Is(err, persistence.ErrNotFound), errors.Is(err, persistence.ErrInUse):
		return err
	case pgCode(err) == codeForeignKeyViolation:
		return fmt.Errorf("%w: product %q: %v", persistence.ErrInUse, id, err)
	}
	return s.dbErr("deleting product "+id, err)
}

// Devices.

const deviceColumns = `id, product_id, sealed_secret IS NOT NULL, sealed_psk IS NOT NULL, created`

func scanDevice(row pgx.CollectableRow) (persistence.Device, error) { return scanDeviceRow(row) }

func scanDeviceRow(row pgx.Row) (persistence.Device, error) {
	var d persistence.Device
	var created int64
	err := row.Scan(&d.ID, &d.ProductID, &d.HasSecret, &d.HasPSK, &created)
	d.Created = fromNanos(created)
	return d, err
}

// sealDevice returns d's sealed secret and PSK (nil when empty).
func (s *Store) sealDevice(d persistence.Device) (secret, psk []byte, err error) {
	if secret, err = s.sealer.Seal([]byte(d.Secret), "secret/"+d.ID); err != nil {
		return nil, nil, err
	}
	if psk, err = s.sealer.Seal(d.PSK, "psk/"+d.ID); err != nil {
		return nil, nil, err
	}
	return secret, psk, nil
}

// productMissing turns a foreign key violation of a device's or package's
// product into ErrNotFound.
func (s *Store) productMissing(what, id, product string, err error) error {
	if pgCode(err) == codeForeignKeyViolation {
		return fmt.Errorf("%s %q: %w", what, id, notFound("product", product))
	}
	return s.dbErr("putting "+what+" "+id, err)
}

// PutDevice implements persistence.Registry.
func (s *Store) PutDevice(ctx context.Context, d persistence.Device) error {
	if err := persistence.ValidateDevice(d); err != nil {
		return err
	}
	secret, psk, err := s.sealDevice(d)
	if err != nil {
		return err
	}
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	_, err = s.pool.Exec(ctx, `
		INSERT INTO devices (id, product_id, sealed_secret, sealed_psk, created) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (id) DO UPDATE SET product_id = excluded.product_id,
			sealed_secret = coalesce(excluded.sealed_secret, devices.sealed_secret),
			sealed_psk = coalesce(excluded.sealed_psk, devices.sealed_psk), created = excluded.created`,
		d.ID, d.ProductID, secret, psk, nanos(d.Created))
	if err != nil {
		return s.productMissing("device", d.ID, d.ProductID, err)
	}
	return nil
}

// CreateDevices implements persistence.Registry: one transaction.
func (s *Store) CreateDevices(ctx context.Context, ds []persistence.Device) error {
	if err := persistence.ValidateNewDevices(ds); err != nil {
		return err
	}
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	if len(ds) == 0 {
		return nil
	}
	ids := make([]string, len(ds))
	products := make([]string, len(ds))
	secrets := make([][]byte, len(ds))
	psks := make([][]byte, len(ds))
	created := make([]int64, len(ds))
	for i, d := range ds {
		var err error
		if secrets[i], psks[i], err = s.sealDevice(d); err != nil {
			return err
		}
		ids[i], products[i], created[i] = d.ID, d.ProductID, nanos(d.Created)
	}
	err := s.tx(ctx, func(tx pgx.Tx) error {
		// Name the first device of an unknown product, and the first
		// device that exists already, as the other stores do.
		var dev, product string
		err := tx.QueryRow(ctx, `
			SELECT d.id, d.product_id FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS d(id, product_id, n)
			WHERE NOT EXISTS (SELECT 1 FROM products p WHERE p.id = d.product_id) ORDER BY n LIMIT 1`, ids, products).Scan(&dev, &product)
		if err == nil {
			return fmt.Errorf("device %q: %w", dev, notFound("product", product))
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		err = tx.QueryRow(ctx, `
			SELECT d.id FROM unnest($1::text[]) WITH ORDINALITY AS d(id, n) JOIN devices USING (id) ORDER BY n LIMIT 1`, ids).Scan(&dev)
		if err == nil {
			return fmt.Errorf("%w: device %q", persistence.ErrExists, dev)
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		_, err = tx.Exec(ctx, `
			INSERT INTO devices (id, product_id, sealed_secret, sealed_psk, created)
			SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::bigint[])`,
			ids, products, secrets, psks, created)
		return err
	})
	switch {
	case err == nil, errors.Is(err, persistence.ErrNotFound), errors.Is(err, persistence.ErrExists):
		return err
	case pgCode(err) == codeUniqueViolation:
		return fmt.Errorf("%w: a device of the call was created meanwhile: %v", persistence.ErrExists, err)
	case pgCode(err) == codeForeignKeyViolation:
		return fmt.Errorf("%w: a product of the call was deleted meanwhile: %v", persistence.ErrNotFound, err)
	}
	return s.dbErr("creating devices", err)
}

// GetDevice implements persistence.Registry.
func (s *Store) GetDevice(ctx context.Context, id string) (persistence.Device, error) {
	var d persistence.Device
	err := s.get(ctx, "device", id, `SELECT `+deviceColumns+` FROM devices WHERE id = $1`, func(row pgx.Row) (err error) {
		d, err = scanDeviceRow(row)
		return err
	})
	return d, err
}

// ListDevices implements persistence.Registry.
func (s *Store) ListDevices(ctx context.Context, after string, limit int) ([]persistence.Device, error) {
	return list(ctx, s, "devices", `SELECT `+deviceColumns+` FROM devices WHERE id > $1 ORDER BY id LIMIT $2`, after, limit, scanDevice)
}

// DeleteDevice implements persistence.Registry.
func (s *Store) DeleteDevice(ctx context.Context, id string) error {
	return s.deleteRow(ctx, "devices", "device", id)
}

// DeviceCredentials implements persistence.Registry. A sealed value that
// does not open is a *persistence.CorruptError.
func (s *Store) DeviceCredentials(ctx context.Context, id string) (persistence.Credentials, error) {
	var secret, psk []byte
	var product string
	err := s.get(ctx, "device", id, `SELECT sealed_secret, sealed_psk, product_id FROM devices WHERE id = $1`, func(row pgx.Row) error {
		return row.Scan(&secret, &psk, &product)
	})
	if err != nil {
		return persistence.Credentials{}, err
	}
	key := []byte("devices/" + id)
	plainSecret, err := s.sealer.Open(secret, "secret/"+id)
	if err != nil {
		return persistence.Credentials{}, &persistence.CorruptError{Key: key, Reason: err.Error()}
	}
	plainPSK, err := s.sealer.Open(psk, "psk/"+id)
	if err != nil {
		return persistence.Credentials{}, &persistence.CorruptError{Key: key, Reason: err.Error()}
	}
	return persistence.Credentials{Secret: string(plainSecret), PSK: plainPSK, ProductID: product}, nil
}

// Groups.

const groupColumns = `id, name, device_ids, created`

func scanGroup(row pgx.CollectableRow) (persistence.Group, error) { return scanGroupRow(row) }

func scanGroupRow(row pgx.Row) (persistence.Group, error) {
	var g persistence.Group
	var created int64
	err := row.Scan(&g.ID, &g.Name, &g.DeviceIDs, &created)
	g.Created = fromNanos(created)
	if len(g.DeviceIDs) == 0 {
		g.DeviceIDs = nil
	}
	return g, err
}

// PutGroup implements persistence.Registry.
func (s *Store) PutGroup(ctx context.Context, g persistence.Group) error {
	if err := persistence.ValidateGroup(g); err != nil {
		return err
	}
	ids := g.DeviceIDs
	if ids == nil {
		ids = []string{}
	}
	_, err := s.exec(ctx, "putting group "+g.ID, `
		INSERT INTO groups (`+groupColumns+`) VALUES ($1, $2, $3, $4)
		ON CONFLICT (id) DO UPDATE SET name = excluded.name, device_ids = excluded.device_ids, created = excluded.created`,
		g.ID, g.Name, ids, nanos(g.Created))
	return err
}

// GetGroup implements persistence.Registry.
func (s *Store) GetGroup(ctx context.Context, id string) (persistence.Group, error) {
	var g persistence.Group
	err := s.get(ctx, "group", id, `SELECT `+groupColumns+` FROM groups WHERE id = $1`, func(row pgx.Row) (err error) {
		g, err = scanGroupRow(row)
		return err
	})
	return g, err
}

// ListGroups implements persistence.Registry.
func (s *Store) ListGroups(ctx context.Context, after string, limit int) ([]persistence.Group, error) {
	return list(ctx, s, "groups", `SELECT `+groupColumns+` FROM groups WHERE id > $1 ORDER BY id LIMIT $2`, after, limit, scanGroup)
}

// DeleteGroup implements persistence.Registry.
func (s *Store) DeleteGroup(ctx context.Context, id string) error {
	return s.deleteRow(ctx, "groups", "group", id)
}

// Tasks.

const taskColumns = `id, name, package_id, created`

func scanTask(row pgx.CollectableRow) (persistence.TaskRecord, error) { return scanTaskRow(row) }

func scanTaskRow(row pgx.Row) (persistence.TaskRecord, error) {
	var t persistence.TaskRecord
	var created int64
	err := row.Scan(&t.ID, &t.Name, &t.PackageID, &created)
	t.Created = fromNanos(created)
	return t, err
}

// PutTask implements persistence.Registry.
func (s *Store) PutTask(ctx context.Context, t persistence.TaskRecord) error {
	if err := persistence.ValidateTask(t); err != nil {
		return err
	}
	_, err := s.exec(ctx, "putting task "+t.ID, `
		INSERT INTO tasks (`+taskColumns+`) VALUES ($1, $2, $3, $4)
		ON CONFLICT (id) DO UPDATE SET name = excluded.name, package_id = excluded.package_id, created = excluded.created`,
		t.ID, t.Name, t.PackageID, nanos(t.Created))
	return err
}

// GetTask implements persistence.Registry.
func (s *Store) GetTask(ctx context.Context, id string) (persistence.TaskRecord, error) {
	var t persistence.TaskRecord
	err := s.get(ctx, "task", id, `SELECT `+taskColumns+` FROM tasks WHERE id = $1`, func(row pgx.Row) (err error) {
		t, err = scanTaskRow(row)
		return err
	})
	return t, err
}

// ListTasks implements persistence.Registry.
func (s *Store) ListTasks(ctx context.Context, after string, limit int) ([]persistence.TaskRecord, error) {
	return list(ctx, s, "tasks", `SELECT `+taskColumns+` FROM tasks WHERE id > $1 ORDER BY id LIMIT $2`, after, limit, scanTask)
}

// DeleteTask implements persistence.Registry.
func (s *Store) DeleteTask(ctx context.Context, id string) error {
	return s.deleteRow(ctx, "tasks", "task", id)
}

// Packages.

const packageColumns = `id, product_id, type, version, source_versions, file_name, size, sha256,
	description, custom_info, omit_sign, segment_size, check_code, created`

func scanPackage(row pgx.CollectableRow) (persistence.Package, error) { return scanPackageRow(row) }

func scanPackageRow(row pgx.Row) (persistence.Package, error) {
	var p persistence.Package
	var sum []byte
	var segment, check, created int64
	err := row.Scan(&p.ID, &p.ProductID, &p.Type, &p.Version, &p.SourceVersions, &p.FileName, &p.Size, &sum,
		&p.Description, &p.CustomInfo, &p.OmitSign, &segment, &check, &created)
	if err != nil {
		return p, err
	}
	if len(p.SourceVersions) == 0 {
		p.SourceVersions = nil
	}
	p.SegmentSize, p.CheckCode, p.Created = uint32(segment), uint32(check), fromNanos(created)
	if len(sum) != len(p.SHA256) {
		return p, &persistence.CorruptError{Key: []byte("packages/" + p.ID), Reason: fmt.Sprintf("SHA-256 of %d bytes", len(sum))}
	}
	copy(p.SHA256[:], sum)
	return p, nil
}

// PutPackage implements persistence.Registry.
func (s *Store) PutPackage(ctx context.Context, p persistence.Package) error {
	if err := persistence.ValidatePackage(p); err != nil {
		return err
	}
	sources := p.SourceVersions
	if sources == nil {
		sources = []string{}
	}
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	_, err := s.pool.Exec(ctx, `
		INSERT INTO packages (`+packageColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
		ON CONFLICT (id) DO UPDATE SET product_id = excluded.product_id, type = excluded.type, version = excluded.version,
			source_versions = excluded.source_versions, file_name = excluded.file_name, size = excluded.size,
			sha256 = excluded.sha256, description = excluded.description, custom_info = excluded.custom_info,
			omit_sign = excluded.omit_sign, segment_size = excluded.segment_size, check_code = excluded.check_code,
			created = excluded.created`,
		p.ID, p.ProductID, int32(p.Type), p.Version, sources, p.FileName, p.Size, p.SHA256[:],
		p.Description, p.CustomInfo, p.OmitSign, int64(p.SegmentSize), int64(p.CheckCode), nanos(p.Created))
	if err != nil {
		return s.productMissing("package", p.ID, p.ProductID, err)
	}
	return nil
}

// GetPackage implements persistence.Registry.
func (s *Store) GetPackage(ctx context.Context, id string) (persistence.Package, error) {
	var p persistence.Package
	err := s.get(ctx, "package", id, `SELECT `+packageColumns+` FROM packages WHERE id = $1`, func(row pgx.Row) (err error) {
		p, err = scanPackageRow(row)
		return err
	})
	return p, err
}

// ListPackages implements persistence.Registry.
func (s *Store) ListPackages(ctx context.Context, after string, limit int) ([]persistence.Package, error) {
	return list(ctx, s, "packages", `SELECT `+packageColumns+` FROM packages WHERE id > $1 ORDER BY id LIMIT $2`, after, limit, scanPackage)
}

// DeletePackage implements persistence.Registry: allowed even while tasks
// use the package (the API layer checks); the blob stays until DeleteBlob.
func (s *Store) DeletePackage(ctx context.Context, id string) error {
	return s.deleteRow(ctx, "packages", "package", id)
}
