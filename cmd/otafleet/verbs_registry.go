package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/rpc"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// resourceCommand makes `otafleet <name>` with the shared client flags.
func resourceCommand(name, short string, o *clientOpts, verbs ...func(*clientOpts) *cobra.Command) *cobra.Command {
	cmd := &cobra.Command{Use: name, Short: short, Args: cobra.NoArgs}
	o.register(cmd)
	for _, v := range verbs {
		cmd.AddCommand(v(o))
	}
	return cmd
}

// clientCommands are the client verbs over the API.
func clientCommands(stdout, stderr io.Writer) []*cobra.Command {
	o := &clientOpts{stdout: stdout, stderr: stderr}
	return []*cobra.Command{
		resourceCommand("product", "Create, read, list and delete products (device models)", o,
			productCreate, productGet, productList, productDelete),
		resourceCommand("device", "Register, read, list and delete devices; read a device's timeline; count the fleet", o,
			deviceCreate, deviceGet, deviceList, deviceDelete, deviceTimeline, deviceSummary),
		resourceCommand("group", "Create and edit device groups", o,
			groupCreate, groupAdd, groupRemove, groupGet, groupList, groupDelete),
		resourceCommand("package", "Upload, read, list and delete upgrade packages", o,
			packageCreate, packageUpload, packageGet, packageList, packageDelete),
		resourceCommand("task", "Create, watch, stop and retry upgrade tasks", o,
			taskCreate, taskGet, taskList, taskStop, taskRetry, taskDevices, taskCells, taskWatch),
		resourceCommand("cluster", "Show the cluster's members, their actors and sessions", o,
			clusterStatus),
	}
}

// Products.

func productRow(p *v1.Product) []string {
	sw := "-"
	if p.GetSoftwareProtocol() != v1.SoftwareProtocol_SOFTWARE_PROTOCOL_UNSPECIFIED {
		sw = strings.ToLower(enumName(p.GetSoftwareProtocol().String(), "SOFTWARE_PROTOCOL_"))
	}
	sec := "-"
	if p.GetLwm2MSecurity() != v1.Lwm2MSecurity_LWM2M_SECURITY_UNSPECIFIED {
		sec = strings.ToLower(enumName(p.GetLwm2MSecurity().String(), "LWM2M_SECURITY_"))
	}
	return []string{p.GetProductId(), p.GetName(), strings.ToLower(enumName(p.GetProtocol().String(), "PROTOCOL_")), sw, sec,
		strconv.FormatBool(p.GetSkipVersionCheck()), fmtTime(p.GetCreateTime())}
}

var productHeader = []string{"PRODUCT", "NAME", "PROTOCOL", "SOFTWARE", "LWM2M-SECURITY", "SKIP-VERSION-CHECK", "CREATED"}

func productCreate(o *clientOpts) *cobra.Command {
	var name, protocol, software, security string
	var skip bool
	cmd := &cobra.Command{
		Use:   "create --name NAME --protocol mqtt|lwm2m [--software-protocol pcp] [--lwm2m-security nosec|psk] [--skip-version-check]",
		Short: "Create a product",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := parseEnum("--protocol", protocol, "PROTOCOL_", v1.Protocol_value)
			if err != nil {
				return err
			}
			req := &v1.CreateProductRequest{Name: name, Protocol: v1.Protocol(p)}
			if software != "" {
				sp, err := parseEnum("--software-protocol", software, "SOFTWARE_PROTOCOL_", v1.SoftwareProtocol_value)
				if err != nil {
					return err
				}
				req.SoftwareProtocol = v1.SoftwareProtocol(sp).Enum()
			}
			if security != "" {
				m, err := parseEnum("--lwm2m-security", security, "LWM2M_SECURITY_", v1.Lwm2MSecurity_value)
				if err != nil {
					return err
				}
				req.Lwm2MSecurity = v1.Lwm2MSecurity(m).Enum()
			}
			if cmd.Flags().Changed("skip-version-check") {
				req.SkipVersionCheck = &skip
			}
			return callShow(o, cmd, func(ctx context.Context, c *client) (*connect.Response[v1.CreateProductResponse], error) {
				return c.products.CreateProduct(ctx, connect.NewRequest(req))
			}, func(res *v1.CreateProductResponse) error {
				return o.table(productHeader, [][]string{productRow(res.GetProduct())})
			})
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "display name")
	cmd.Flags().StringVar(&protocol, "protocol", "", "device protocol: mqtt or lwm2m")
	cmd.Flags().StringVar(&software, "software-protocol", "", "software upgrades of LwM2M devices: pcp")
	cmd.Flags().StringVar(&security, "lwm2m-security", "", "security mode of LwM2M devices: nosec (default: plain CoAP, or DTLS for devices with a PSK) or psk (every device needs a PSK and registers over DTLS only)")
	cmd.Flags().BoolVar(&skip, "skip-version-check", false, "only note a device version that no package source version allows, instead of failing the device")
	_ = cmd.MarkFlagRequired("protocol")
	return cmd
}

func productGet(o *clientOpts) *cobra.Command {
	return &cobra.Command{
		Use: "get PRODUCT_ID", Short: "Show a product", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callShow(o, cmd, func(ctx context.Context, c *client) (*connect.Response[v1.GetProductResponse], error) {
				return c.products.GetProduct(ctx, connect.NewRequest(&v1.GetProductRequest{ProductId: args[0]}))
			}, func(res *v1.GetProductResponse) error {
				return o.table(productHeader, [][]string{productRow(res.GetProduct())})
			})
		},
	}
}

func productList(o *clientOpts) *cobra.Command {
	var l listFlags
	cmd := &cobra.Command{
		Use: "list", Short: "List products", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return listShow(o, cmd, &l, func(ctx context.Context, c *client, token string) (*connect.Response[v1.ListProductsResponse], error) {
				return c.products.ListProducts(ctx, connect.NewRequest(&v1.ListProductsRequest{PageSize: l.pageSize, PageToken: token}))
			}, func(all, page *v1.ListProductsResponse) string {
				all.Products, all.NextPageToken = append(all.Products, page.GetProducts()...), page.GetNextPageToken()
				return all.NextPageToken
			}, func(all *v1.ListProductsResponse) error {
				rows := make([][]string, len(all.Products))
				for i, p := range all.Products {
					rows[i] = productRow(p)
				}
				return o.table(productHeader, rows)
			})
		},
	}
	l.register(cmd)
	return cmd
}

func productDelete(o *clientOpts) *cobra.Command {
	return &cobra.Command{
		Use: "delete PRODUCT_ID", Short: "Delete a product without devices or packages", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callShow(o, cmd, func(ctx context.Context, c *client) (*connect.Response[v1.DeleteProductResponse], error) {
				return c.products.DeleteProduct(ctx, connect.NewRequest(&v1.DeleteProductRequest{ProductId: args[0]}))
			}, func(res *v1.DeleteProductResponse) error {
				_, err := fmt.Fprintf(o.stdout, "deleted product %s\n", args[0])
				return err
			})
		},
	}
}

// Devices.

// readDeviceFile reads one device per line: ID[,SECRET[,PSK-HEX]]; blank
// lines and lines starting with '#' are skipped.
func readDeviceFile(path string) ([]*v1.NewDevice, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []*v1.NewDevice
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.Split(line, ",")
		if len(parts) > 3 {
			return nil, fmt.Errorf("%s:%d: want ID[,SECRET[,PSK-HEX]], got %d fields", path, n, len(parts))
		}
		d := &v1.NewDevice{DeviceId: strings.TrimSpace(parts[0])}
		if len(parts) > 1 && strings.TrimSpace(parts[1]) != "" {
			s := strings.TrimSpace(parts[1])
			d.Secret = &s
		}
		if len(parts) > 2 && strings.TrimSpace(parts[2]) != "" {
			psk, err := hex.DecodeString(strings.TrimSpace(parts[2]))
			if err != nil {
				return nil, fmt.Errorf("%s:%d: PSK: %w", path, n, err)
			}
			d.Psk = psk
		}
		out = append(out, d)
	}
	return out, sc.Err()
}

func deviceCreate(o *clientOpts) *cobra.Command {
	var product, secret, pskHex, prefix, file string
	var count, start int
	cmd := &cobra.Command{
		Use:   "create --product P [--secret S | --psk HEX] (ID... | --prefix PFX --count N | --file F)",
		Short: "Register devices (10,000 per call, each call all or nothing)",
		Long: `Register devices of one product. The IDs come from the arguments, from
--prefix and --count (PFX0 ... PFX<N-1>, like otafleet sim), or from --file
(one device per line: ID[,SECRET[,PSK-HEX]]). --secret and --psk apply to
every device without its own. Secrets and PSKs are stored sealed and never
shown again. More than 10,000 devices go in several calls; each call is all
or nothing, and on an error the devices of the earlier calls stay.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			var devs []*v1.NewDevice
			for _, id := range args {
				devs = append(devs, &v1.NewDevice{DeviceId: id})
			}
			if count > 0 {
				if prefix == "" {
					return usageError(errors.New("--count needs --prefix"))
				}
				for i := start; i < start+count; i++ {
					devs = append(devs, &v1.NewDevice{DeviceId: prefix + strconv.Itoa(i)})
				}
			}
			if file != "" {
				fd, err := readDeviceFile(file)
				if err != nil {
					return usageError(err)
				}
				devs = append(devs, fd...)
			}
			if len(devs) == 0 {
				return usageError(errors.New("no devices: give IDs, --prefix and --count, or --file"))
			}
			var psk []byte
			if pskHex != "" {
				var err error
				if psk, err = hex.DecodeString(pskHex); err != nil {
					return usageError(fmt.Errorf("--psk: %w", err))
				}
			}
			for _, d := range devs {
				if secret != "" && d.Secret == nil {
					d.Secret = &secret
				}
				if psk != nil && d.Psk == nil {
					d.Psk = psk
				}
			}
			c, err := o.connect()
			if err != nil {
				return err
			}
			all := &v1.CreateDevicesResponse{}
			for len(devs) > 0 {
				n := min(len(devs), persistence.MaxCreateDevices)
				ctx, cancel := o.call(cmd.Context())
				res, err := c.devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{ProductId: product, Devices: devs[:n]}))
				cancel()
				if err != nil {
					if len(all.DeviceIds) > 0 {
						return fmt.Errorf("%s created before this error: %w", plural(len(all.DeviceIds), "device"), err)
					}
					return err
				}
				all.DeviceIds = append(all.DeviceIds, res.Msg.GetDeviceIds()...)
				devs = devs[n:]
			}
			return o.show(all, func() error {
				_, err := fmt.Fprintf(o.stdout, "created %s of product %s\n", plural(len(all.DeviceIds), "device"), product)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&product, "product", "", "the devices' product ID")
	cmd.Flags().StringVar(&secret, "secret", "", "MQTT devices: the secret their password derives from")
	cmd.Flags().StringVar(&pskHex, "psk", "", "LwM2M devices over DTLS: the pre-shared key, in hex")
	cmd.Flags().StringVar(&prefix, "prefix", "", "generate IDs: this prefix followed by a number")
	cmd.Flags().IntVar(&count, "count", 0, "generate this many IDs with --prefix")
	cmd.Flags().IntVar(&start, "start", 0, "first number of the generated IDs")
	cmd.Flags().StringVar(&file, "file", "", "read devices from this file: one ID[,SECRET[,PSK-HEX]] per line")
	_ = cmd.MarkFlagRequired("product")
	return cmd
}

var deviceHeader = []string{"DEVICE", "PRODUCT", "ONLINE", "FW", "SW", "CELL", "RSRP", "SINR", "LAST-SEEN"}

func deviceRow(d *v1.Device) []string {
	opt := func(v *int32) string {
		if v == nil {
			return "-"
		}
		return strconv.Itoa(int(*v))
	}
	return []string{d.GetDeviceId(), d.GetProductId(), strconv.FormatBool(d.GetOnline()), orDash(d.GetFwVersion()), orDash(d.GetSwVersion()),
		orDash(d.GetCellId()), opt(d.Rsrp), opt(d.Sinr), fmtTime(d.GetLastSeenTime())}
}

func deviceGet(o *clientOpts) *cobra.Command {
	return &cobra.Command{
		Use: "get DEVICE_ID", Short: "Show a device with its live state", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callShow(o, cmd, func(ctx context.Context, c *client) (*connect.Response[v1.GetDeviceResponse], error) {
				return c.devices.GetDevice(ctx, connect.NewRequest(&v1.GetDeviceRequest{DeviceId: args[0]}))
			}, func(res *v1.GetDeviceResponse) error {
				d := res.GetDevice()
				row := deviceRow(d)
				return o.fields("device", row[0], "product", row[1], "online", row[2], "firmware", row[3], "software", row[4],
					"cell", row[5], "rsrp", row[6], "sinr", row[7], "last seen", row[8],
					"secret", strconv.FormatBool(d.GetHasSecret()), "psk", strconv.FormatBool(d.GetHasPsk()), "created", fmtTime(d.GetCreateTime()))
			})
		},
	}
}

func deviceList(o *clientOpts) *cobra.Command {
	var l listFlags
	cmd := &cobra.Command{
		Use: "list", Short: "List devices in ID order", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return listShow(o, cmd, &l, func(ctx context.Context, c *client, token string) (*connect.Response[v1.ListDevicesResponse], error) {
				return c.devices.ListDevices(ctx, connect.NewRequest(&v1.ListDevicesRequest{PageSize: l.pageSize, PageToken: token}))
			}, func(all, page *v1.ListDevicesResponse) string {
				all.Devices, all.NextPageToken = append(all.Devices, page.GetDevices()...), page.GetNextPageToken()
				return all.NextPageToken
			}, func(all *v1.ListDevicesResponse) error {
				rows := make([][]string, len(all.Devices))
				for i, d := range all.Devices {
					rows[i] = deviceRow(d)
				}
				return o.table(deviceHeader, rows)
			})
		},
	}
	l.register(cmd)
	return cmd
}

func deviceDelete(o *clientOpts) *cobra.Command {
	return &cobra.Command{
		Use: "delete DEVICE_ID", Short: "Delete a device", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callShow(o, cmd, func(ctx context.Context, c *client) (*connect.Response[v1.DeleteDeviceResponse], error) {
				return c.devices.DeleteDevice(ctx, connect.NewRequest(&v1.DeleteDeviceRequest{DeviceId: args[0]}))
			}, func(res *v1.DeleteDeviceResponse) error {
				_, err := fmt.Fprintf(o.stdout, "deleted device %s\n", args[0])
				return err
			})
		},
	}
}

var fleetSummaryHeader = []string{"PRODUCT", "REGISTERED", "ONLINE", "OFFLINE"}

// fleetSummaryRows are the rows of `device summary`: one per product, then
// the total (withTotal).
func fleetSummaryRows(res *v1.GetFleetSummaryResponse, withTotal bool) [][]string {
	row := func(name string, n *v1.DeviceCounts) []string {
		return []string{name, strconv.FormatInt(n.GetRegistered(), 10), strconv.FormatInt(n.GetOnline(), 10), strconv.FormatInt(n.GetOffline(), 10)}
	}
	rows := make([][]string, 0, len(res.GetProducts())+1)
	for _, p := range res.GetProducts() {
		rows = append(rows, row(p.GetProductId(), p.GetDevices()))
	}
	if withTotal {
		rows = append(rows, row("total", res.GetTotal()))
	}
	return rows
}

func deviceSummary(o *clientOpts) *cobra.Command {
	var product string
	cmd := &cobra.Command{
		Use:   "summary",
		Short: "Count the devices registered, online and offline, per product and in total",
		Long: `Count the devices registered, online and offline, per product and in total
(GetFleetSummary). Online means a session with the server: an MQTT connection or
an LwM2M registration. The server keeps the counts as devices come and go, so
this costs the same for ten devices as for a million.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return callShow(o, cmd, func(ctx context.Context, c *client) (*connect.Response[v1.GetFleetSummaryResponse], error) {
				return c.devices.GetFleetSummary(ctx, connect.NewRequest(&v1.GetFleetSummaryRequest{ProductId: product}))
			}, func(res *v1.GetFleetSummaryResponse) error {
				return o.table(fleetSummaryHeader, fleetSummaryRows(res, product == ""))
			})
		},
	}
	cmd.Flags().StringVar(&product, "product", "", "count only this product's devices")
	return cmd
}

func deviceTimeline(o *clientOpts) *cobra.Command {
	var l listFlags
	var task string
	var reveal bool
	cmd := &cobra.Command{
		Use: "timeline DEVICE_ID [--task TASK_ID] [--reveal-tokens]", Short: "Show every decision and report of a device, oldest first", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return listShow(o, cmd, &l, func(ctx context.Context, c *client, token string) (*connect.Response[v1.GetDeviceTimelineResponse], error) {
				req := &v1.GetDeviceTimelineRequest{DeviceId: args[0], PageSize: l.pageSize, PageToken: token, RevealTokens: reveal}
				if task != "" {
					req.TaskId = &task
				}
				return c.devices.GetDeviceTimeline(ctx, connect.NewRequest(req))
			}, func(all, page *v1.GetDeviceTimelineResponse) string {
				all.Entries, all.NextPageToken = append(all.Entries, page.GetEntries()...), page.GetNextPageToken()
				return all.NextPageToken
			}, func(all *v1.GetDeviceTimelineResponse) error {
				rows := make([][]string, len(all.Entries))
				for i, e := range all.Entries {
					rows[i] = []string{fmtTime(e.GetTime()), orDash(e.GetTaskId()), e.GetKind(), e.GetDetail()}
				}
				return o.table([]string{"TIME", "TASK", "KIND", "DETAIL"}, rows)
			})
		},
	}
	cmd.Flags().StringVar(&task, "task", "", "only entries of this task")
	cmd.Flags().BoolVar(&reveal, "reveal-tokens", false, "show the download URIs devices were given with their tokens (masked as *** otherwise), e.g. to fetch a package by hand")
	l.register(cmd)
	return cmd
}

// Groups.

var groupHeader = []string{"GROUP", "NAME", "DEVICES", "CREATED"}

func groupRow(g *v1.Group) []string {
	return []string{g.GetGroupId(), g.GetName(), strconv.Itoa(len(g.GetDeviceIds())), fmtTime(g.GetCreateTime())}
}

// groupFields prints a group with its members.
func (o *clientOpts) groupFields(g *v1.Group) error {
	return o.fields("group", g.GetGroupId(), "name", g.GetName(), "created", fmtTime(g.GetCreateTime()),
		"devices", fmt.Sprintf("%d: %s", len(g.GetDeviceIds()), strings.Join(g.GetDeviceIds(), " ")))
}

func groupCreate(o *clientOpts) *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use: "create --name NAME [DEVICE_ID...]", Short: "Create a group", Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return callShow(o, cmd, func(ctx context.Context, c *client) (*connect.Response[v1.CreateGroupResponse], error) {
				return c.groups.CreateGroup(ctx, connect.NewRequest(&v1.CreateGroupRequest{Name: name, DeviceIds: args}))
			}, func(res *v1.CreateGroupResponse) error { return o.groupFields(res.GetGroup()) })
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "display name")
	return cmd
}

func groupAdd(o *clientOpts) *cobra.Command {
	return &cobra.Command{
		Use: "add GROUP_ID DEVICE_ID...", Short: "Add devices to a group", Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callShow(o, cmd, func(ctx context.Context, c *client) (*connect.Response[v1.AddDevicesResponse], error) {
				return c.groups.AddDevices(ctx, connect.NewRequest(&v1.AddDevicesRequest{GroupId: args[0], DeviceIds: args[1:]}))
			}, func(res *v1.AddDevicesResponse) error { return o.groupFields(res.GetGroup()) })
		},
	}
}

func groupRemove(o *clientOpts) *cobra.Command {
	return &cobra.Command{
		Use: "remove GROUP_ID DEVICE_ID...", Short: "Remove devices from a group", Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callShow(o, cmd, func(ctx context.Context, c *client) (*connect.Response[v1.RemoveDevicesResponse], error) {
				return c.groups.RemoveDevices(ctx, connect.NewRequest(&v1.RemoveDevicesRequest{GroupId: args[0], DeviceIds: args[1:]}))
			}, func(res *v1.RemoveDevicesResponse) error { return o.groupFields(res.GetGroup()) })
		},
	}
}

func groupGet(o *clientOpts) *cobra.Command {
	return &cobra.Command{
		Use: "get GROUP_ID", Short: "Show a group with its devices", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callShow(o, cmd, func(ctx context.Context, c *client) (*connect.Response[v1.GetGroupResponse], error) {
				return c.groups.GetGroup(ctx, connect.NewRequest(&v1.GetGroupRequest{GroupId: args[0]}))
			}, func(res *v1.GetGroupResponse) error { return o.groupFields(res.GetGroup()) })
		},
	}
}

func groupList(o *clientOpts) *cobra.Command {
	var l listFlags
	cmd := &cobra.Command{
		Use: "list", Short: "List groups", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return listShow(o, cmd, &l, func(ctx context.Context, c *client, token string) (*connect.Response[v1.ListGroupsResponse], error) {
				return c.groups.ListGroups(ctx, connect.NewRequest(&v1.ListGroupsRequest{PageSize: l.pageSize, PageToken: token}))
			}, func(all, page *v1.ListGroupsResponse) string {
				all.Groups, all.NextPageToken = append(all.Groups, page.GetGroups()...), page.GetNextPageToken()
				return all.NextPageToken
			}, func(all *v1.ListGroupsResponse) error {
				rows := make([][]string, len(all.Groups))
				for i, g := range all.Groups {
					rows[i] = groupRow(g)
				}
				return o.table(groupHeader, rows)
			})
		},
	}
	l.register(cmd)
	return cmd
}

func groupDelete(o *clientOpts) *cobra.Command {
	return &cobra.Command{
		Use: "delete GROUP_ID", Short: "Delete a group (its devices stay)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callShow(o, cmd, func(ctx context.Context, c *client) (*connect.Response[v1.DeleteGroupResponse], error) {
				return c.groups.DeleteGroup(ctx, connect.NewRequest(&v1.DeleteGroupRequest{GroupId: args[0]}))
			}, func(res *v1.DeleteGroupResponse) error {
				_, err := fmt.Fprintf(o.stdout, "deleted group %s\n", args[0])
				return err
			})
		},
	}
}

// Packages.

var packageHeader = []string{"PACKAGE", "PRODUCT", "TYPE", "VERSION", "SOURCES", "FILE", "SIZE", "SHA256", "CREATED"}

func packageRow(p *v1.Package) []string {
	src := "any"
	if len(p.GetSourceVersions()) > 0 {
		src = strings.Join(p.GetSourceVersions(), ",")
	}
	return []string{p.GetPackageId(), p.GetProductId(), strings.ToLower(enumName(p.GetPackageType().String(), "PACKAGE_TYPE_")),
		p.GetVersion(), src, p.GetFileName(), strconv.FormatInt(p.GetSize(), 10), p.GetSha256(), fmtTime(p.GetCreateTime())}
}

// packageFlags are the metadata flags of package create and upload.
type packageFlags struct {
	product, typ, version, fileName, description, customInfo string
	sources                                                  []string
	omitSign                                                 bool
}

func (p *packageFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&p.product, "product", "", "the package's product ID")
	cmd.Flags().StringVar(&p.typ, "type", "", "firmware or software")
	cmd.Flags().StringVar(&p.version, "version", "", "the version the package installs")
	cmd.Flags().StringSliceVar(&p.sources, "source-version", nil, "a version the package upgrades from (repeat or comma-separate; none: any)")
	cmd.Flags().StringVar(&p.fileName, "file-name", "", "file name devices see; default: FILE's base name")
	cmd.Flags().StringVar(&p.description, "description", "", "free text")
	cmd.Flags().StringVar(&p.customInfo, "custom-info", "", "passed to MQTT devices with the upgrade event")
	cmd.Flags().BoolVar(&p.omitSign, "omit-sign", false, "send MQTT devices no sign (SHA-256) with the upgrade event")
	_ = cmd.MarkFlagRequired("product")
	_ = cmd.MarkFlagRequired("type")
	_ = cmd.MarkFlagRequired("version")
}

func (p *packageFlags) metadata(cmd *cobra.Command, file string) (*v1.UploadPackageMetadata, error) {
	t, err := parseEnum("--type", p.typ, "PACKAGE_TYPE_", v1.PackageType_value)
	if err != nil {
		return nil, err
	}
	md := &v1.UploadPackageMetadata{
		ProductId: p.product, PackageType: v1.PackageType(t), Version: p.version,
		SourceVersions: p.sources, FileName: p.fileName,
	}
	if md.FileName == "" {
		md.FileName = filepath.Base(file)
	}
	if cmd.Flags().Changed("description") {
		md.Description = &p.description
	}
	if cmd.Flags().Changed("custom-info") {
		md.CustomInfo = &p.customInfo
	}
	if cmd.Flags().Changed("omit-sign") {
		md.OmitSign = &p.omitSign
	}
	return md, nil
}

func packageCreate(o *clientOpts) *cobra.Command {
	var pf packageFlags
	cmd := &cobra.Command{
		Use:   "create --product P --type firmware|software --version V [--source-version V]... FILE",
		Short: "Create a package from a file of at most 8 MiB in one call (see upload for larger ones)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			md, err := pf.metadata(cmd, args[0])
			if err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			content, err := io.ReadAll(io.LimitReader(f, rpc.MaxInlineContent+1))
			if err != nil {
				return err
			}
			if len(content) > rpc.MaxInlineContent {
				return usageError(fmt.Errorf("%s is larger than 8 MiB: use otafleet package upload", args[0]))
			}
			return callShow(o, cmd, func(ctx context.Context, c *client) (*connect.Response[v1.CreatePackageResponse], error) {
				return c.packages.CreatePackage(ctx, connect.NewRequest(&v1.CreatePackageRequest{
					ProductId: md.ProductId, PackageType: md.PackageType, Version: md.Version, SourceVersions: md.SourceVersions,
					FileName: md.FileName, Content: content, Description: md.Description, CustomInfo: md.CustomInfo, OmitSign: md.OmitSign,
				}))
			}, func(res *v1.CreatePackageResponse) error {
				return o.table(packageHeader, [][]string{packageRow(res.GetPackage())})
			})
		},
	}
	pf.register(cmd)
	return cmd
}

// uploadChunk is the size of one UploadPackage chunk.
const uploadChunk = 1 << 20

func packageUpload(o *clientOpts) *cobra.Command {
	var pf packageFlags
	cmd := &cobra.Command{
		Use:   "upload --product P --type firmware|software --version V [--source-version V]... FILE",
		Short: "Upload a package of up to 1 GiB as a stream, with a progress bar",
		Long: `Upload a package as a stream of 1 MiB chunks. The file is read once: its
SHA-256 is computed on the way and compared with the server's; on a
mismatch the package is deleted again and the command fails.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			md, err := pf.metadata(cmd, args[0])
			if err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return err
			}
			if st.Size() > rpc.MaxUploadBytes {
				return usageError(fmt.Errorf("%s is %d bytes, more than the 1 GiB a package may have", args[0], st.Size()))
			}
			size := st.Size()
			md.Size = &size
			c, err := o.connect()
			if err != nil {
				return err
			}
			bar := progressbar.NewOptions64(size,
				progressbar.OptionSetWriter(o.stderr), progressbar.OptionSetVisibility(o.showProgress()),
				progressbar.OptionSetDescription("uploading "+md.GetFileName()), progressbar.OptionShowBytes(true),
				progressbar.OptionSetWidth(30), progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionShowCount(),
				progressbar.OptionOnCompletion(func() { fmt.Fprintln(o.stderr) }))
			stream := c.packages.UploadPackage(cmd.Context())
			if err := stream.Send(&v1.UploadPackageRequest{Part: &v1.UploadPackageRequest_Metadata{Metadata: md}}); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			h := sha256.New()
			r := io.TeeReader(f, h)
			buf := make([]byte, uploadChunk)
			var sent int64
			for {
				n, rerr := io.ReadFull(r, buf)
				if n > 0 {
					if err := stream.Send(&v1.UploadPackageRequest{Part: &v1.UploadPackageRequest_Chunk{Chunk: buf[:n]}}); err != nil {
						if errors.Is(err, io.EOF) {
							break // the server ended the stream: its error comes with CloseAndReceive
						}
						return err
					}
					sent += int64(n)
					_ = bar.Set64(sent)
				}
				if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
					break
				}
				if rerr != nil {
					_, _ = stream.CloseAndReceive()
					return fmt.Errorf("reading %s: %w", args[0], rerr)
				}
			}
			res, err := stream.CloseAndReceive()
			if err != nil {
				return err
			}
			_ = bar.Finish()
			p := res.Msg.GetPackage()
			if local := hex.EncodeToString(h.Sum(nil)); p.GetSha256() != local || sent != p.GetSize() {
				ctx, cancel := o.call(cmd.Context())
				defer cancel()
				_, derr := c.packages.DeletePackage(ctx, connect.NewRequest(&v1.DeletePackageRequest{PackageId: p.GetPackageId()}))
				return fmt.Errorf("the server stored %d bytes with SHA-256 %s, the file sent has %d bytes with %s; package %s deleted again (%v)",
					p.GetSize(), p.GetSha256(), sent, local, p.GetPackageId(), derr)
			}
			return o.show(res.Msg, func() error { return o.table(packageHeader, [][]string{packageRow(p)}) })
		},
	}
	pf.register(cmd)
	return cmd
}

func packageGet(o *clientOpts) *cobra.Command {
	return &cobra.Command{
		Use: "get PACKAGE_ID", Short: "Show a package", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callShow(o, cmd, func(ctx context.Context, c *client) (*connect.Response[v1.GetPackageResponse], error) {
				return c.packages.GetPackage(ctx, connect.NewRequest(&v1.GetPackageRequest{PackageId: args[0]}))
			}, func(res *v1.GetPackageResponse) error {
				p := res.GetPackage()
				row := packageRow(p)
				return o.fields("package", row[0], "product", row[1], "type", row[2], "version", row[3], "source versions", row[4],
					"file", row[5], "size", row[6], "sha256", row[7], "description", orDash(p.GetDescription()),
					"custom info", orDash(p.GetCustomInfo()), "omit sign", strconv.FormatBool(p.GetOmitSign()), "created", row[8])
			})
		},
	}
}

func packageList(o *clientOpts) *cobra.Command {
	var l listFlags
	cmd := &cobra.Command{
		Use: "list", Short: "List packages", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return listShow(o, cmd, &l, func(ctx context.Context, c *client, token string) (*connect.Response[v1.ListPackagesResponse], error) {
				return c.packages.ListPackages(ctx, connect.NewRequest(&v1.ListPackagesRequest{PageSize: l.pageSize, PageToken: token}))
			}, func(all, page *v1.ListPackagesResponse) string {
				all.Packages, all.NextPageToken = append(all.Packages, page.GetPackages()...), page.GetNextPageToken()
				return all.NextPageToken
			}, func(all *v1.ListPackagesResponse) error {
				rows := make([][]string, len(all.Packages))
				for i, p := range all.Packages {
					rows[i] = packageRow(p)
				}
				return o.table(packageHeader, rows)
			})
		},
	}
	l.register(cmd)
	return cmd
}

func packageDelete(o *clientOpts) *cobra.Command {
	return &cobra.Command{
		Use: "delete PACKAGE_ID", Short: "Delete a package and its file (refused while an unfinished task installs it)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callShow(o, cmd, func(ctx context.Context, c *client) (*connect.Response[v1.DeletePackageResponse], error) {
				return c.packages.DeletePackage(ctx, connect.NewRequest(&v1.DeletePackageRequest{PackageId: args[0]}))
			}, func(res *v1.DeletePackageResponse) error {
				_, err := fmt.Fprintf(o.stdout, "deleted package %s\n", args[0])
				return err
			})
		},
	}
}
