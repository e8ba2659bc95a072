package main

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/bench"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// clusterStepArgs are serve's device-step timeouts of the cluster process
// tests: d for every step (the defaults, 3 min and more, would make a lost
// command cost minutes), and the device listeners on free ports.
func clusterStepArgs(d string) []string {
	return []string{"--mqtt-addr", "127.0.0.1:0", "--coap-addr", "127.0.0.1:0", "--download-addr", "127.0.0.1:0",
		"--timeout-version-report", d, "--timeout-radio-query", d, "--timeout-cell-query", d,
		"--timeout-download-start", d, "--timeout-update-start", d, "--timeout-version-check", d}
}

// clusterCampaign is the workload of the cluster process tests: a mixed
// fleet (MQTT, LwM2M FOTA, PCP) of `otafleet sim` processes, one per node
// the devices start on, each device given every node's address to fail
// over to, and one task per protocol.
type clusterCampaign struct {
	t     *testing.T
	cli   *bench.API
	fleet bench.Fleet
	tasks []string
	sims  []*simProc
}

// startClusterCampaign registers devices devices (spread evenly over
// nodes: the k-th simulator's devices start on nodes[k] and fail over to
// the next ones), checks that every node holds LwM2M sessions, and creates
// a task per protocol through api. simArgs go to every simulator.
func startClusterCampaign(ctx context.Context, t *testing.T, api *clusterNode, token string, nodes []*clusterNode, devices int, simArgs ...string) *clusterCampaign {
	t.Helper()
	c := &clusterCampaign{t: t, cli: bench.NewAPI(api.api, token)}
	var mqttAddrs, coapAddrs []string
	for _, n := range nodes {
		a := readAddrsJSON(t, n.dir)
		mqttAddrs = append(mqttAddrs, "tcp://"+a["mqtt"])
		coapAddrs = append(coapAddrs, a["coap"])
	}
	protos := []string{bench.ProtoMQTT, bench.ProtoLwM2M, bench.ProtoPCP}
	products := map[string]string{}
	for _, p := range protos {
		req := &v1.CreateProductRequest{Name: "cluster " + p, Protocol: v1.Protocol_PROTOCOL_LWM2M}
		switch p {
		case bench.ProtoMQTT:
			req.Protocol = v1.Protocol_PROTOCOL_MQTT
		case bench.ProtoPCP:
			sp := v1.SoftwareProtocol_SOFTWARE_PROTOCOL_PCP
			req.SoftwareProtocol = &sp
		}
		res, err := c.cli.Products.CreateProduct(ctx, connect.NewRequest(req))
		if err != nil {
			t.Fatal(err)
		}
		products[p] = res.Msg.GetProduct().GetProductId()
	}

	per := devices / len(nodes)
	for k := range nodes {
		c.sims = append(c.sims, startSimProc(t, api.dir, append([]string{
			"--protocol", "mixed", "--devices", strconv.Itoa(per), "--first", strconv.Itoa(k * per),
			"--product", products[bench.ProtoMQTT] + "," + products[bench.ProtoLwM2M] + "," + products[bench.ProtoPCP],
			"--fw-version", "1.0", "--sw-version", "1.0", "--cells", "12", "--coverage", "mixed", "--register",
			"--api", api.api, "--mqtt", strings.Join(rotate(mqttAddrs, k), ","), "--coap", strings.Join(rotate(coapAddrs, k), ","),
			"--lwm2m-lifetime", "6s", "--log-level", "warn"}, simArgs...)...))
	}
	for _, s := range c.sims {
		s.awaitReady(ctx)
	}
	// Every node holds LwM2M devices' sessions, and knows its own.
	st := getClusterStatus(ctx, t, api.api, token)
	sessions := 0
	for _, n := range st.GetNodes() {
		sessions += int(n.GetSessions())
		if n.GetSessions() == 0 || n.GetSelf() != (n.GetAddress() == api.addr) || n.GetError() != "" {
			t.Errorf("cluster status: %v", n)
		}
	}
	if want := 2 * per * len(nodes) / 3; sessions != want {
		t.Errorf("%d sessions in the store, want the LwM2M devices' %d", sessions, want)
	}

	content := make([]byte, 8<<10)
	for i := range content {
		content[i] = byte(i * 7)
	}
	c.fleet = bench.Fleet{Protocols: protos, Devices: per * len(nodes), Prefix: simIDPrefix, Cells: 12}
	for _, p := range protos {
		typ, ttyp := v1.PackageType_PACKAGE_TYPE_FIRMWARE, v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE
		if p == bench.ProtoPCP {
			typ, ttyp = v1.PackageType_PACKAGE_TYPE_SOFTWARE, v1.TaskType_TASK_TYPE_SOFTWARE_UPGRADE
		}
		pkg, err := c.cli.Packages.CreatePackage(ctx, connect.NewRequest(&v1.CreatePackageRequest{
			ProductId: products[p], PackageType: typ, Version: "2.0", SourceVersions: []string{"1.0"},
			FileName: "cluster-" + p + ".bin", Content: content,
		}))
		if err != nil {
			t.Fatal(err)
		}
		task, err := c.cli.Tasks.CreateTask(ctx, connect.NewRequest(&v1.CreateTaskRequest{
			Name: "cluster_" + p, TaskType: ttyp, PackageId: pkg.Msg.GetPackage().GetPackageId(), DeviceIds: c.fleet.IDs(p),
		}))
		if err != nil {
			t.Fatal(err)
		}
		c.tasks = append(c.tasks, task.Msg.GetTask().GetTaskId())
	}
	return c
}

// ids is every device of the fleet.
func (c *clusterCampaign) ids() []string {
	var ids []string
	for _, p := range c.fleet.Protocols {
		ids = append(ids, c.fleet.IDs(p)...)
	}
	return ids
}

// awaitFinal polls the tasks until at least n devices are final (the
// count read can lag) and returns how many are.
func (c *clusterCampaign) awaitFinal(ctx context.Context, n int) int {
	c.t.Helper()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		final, _ := progress(ctx, c.t, c.cli, c.tasks)
		if final >= n {
			return final
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			c.t.Fatalf("%d devices not final: %d", n, final)
		}
	}
}

// awaitDone polls the tasks until every one is finished and returns the
// devices' counts (progress). On timeout it lists the devices the tasks
// still count PROCESSING, hands them to onTimeout (diagnostics) and fails.
func (c *clusterCampaign) awaitDone(ctx context.Context, onTimeout func(processing []string)) map[string]int {
	c.t.Helper()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last map[string]int
	for {
		_, counts := progress(ctx, c.t, c.cli, c.tasks)
		if counts["done"] == len(c.tasks) {
			return counts
		}
		if ctx.Err() == nil {
			last = counts
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			lctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			var processing []string
			st := v1.SubtaskStatus_SUBTASK_STATUS_PROCESSING
			for _, id := range c.tasks {
				res, err := c.cli.Tasks.ListTaskDevices(lctx, connect.NewRequest(&v1.ListTaskDevicesRequest{TaskId: id, Status: &st, PageSize: 1000}))
				if err != nil {
					c.t.Logf("ListTaskDevices %s: %v", id, err)
					continue
				}
				for _, d := range res.Msg.GetDevices() {
					processing = append(processing, d.GetDeviceId())
				}
			}
			cancel()
			c.t.Logf("the tasks count %d devices PROCESSING: %v", len(processing), processing[:min(len(processing), 20)])
			onTimeout(processing)
			c.t.Fatalf("campaign not finished: %v", last)
		}
	}
}

// checkDevices lists every task's devices and checks that each device is
// listed once, in a final state, and that the fleet is all there; it
// returns the failed devices with their reasons.
func (c *clusterCampaign) checkDevices(ctx context.Context) (failed []string, reason map[string]string) {
	c.t.Helper()
	seen := map[string]string{}
	reason = map[string]string{}
	for _, id := range c.tasks {
		for page := ""; ; {
			res, err := c.cli.Tasks.ListTaskDevices(ctx, connect.NewRequest(&v1.ListTaskDevicesRequest{TaskId: id, PageSize: 1000, PageToken: page}))
			if err != nil {
				c.t.Fatal(err)
			}
			for _, d := range res.Msg.GetDevices() {
				if prev, dup := seen[d.GetDeviceId()]; dup {
					c.t.Errorf("device %s listed twice: %s and %s", d.GetDeviceId(), prev, d.GetStatus())
				}
				seen[d.GetDeviceId()] = d.GetStatus().String()
				if r := d.GetFailureReason(); r != "" {
					failed = append(failed, d.GetDeviceId())
					reason[d.GetDeviceId()] = r
				}
				switch d.GetStatus() {
				case v1.SubtaskStatus_SUBTASK_STATUS_SUCCESS, v1.SubtaskStatus_SUBTASK_STATUS_FAIL, v1.SubtaskStatus_SUBTASK_STATUS_STOPPED:
				default:
					c.t.Errorf("device %s ends %s", d.GetDeviceId(), d.GetStatus())
				}
			}
			if page = res.Msg.GetNextPageToken(); page == "" {
				break
			}
		}
	}
	if len(seen) != c.fleet.Devices {
		c.t.Errorf("%d devices in the tasks, want %d", len(seen), c.fleet.Devices)
	}
	return failed, reason
}

// stopSims stops the simulators, checks that none of their devices
// installed twice, and returns the upgrades they installed.
func (c *clusterCampaign) stopSims() int {
	c.t.Helper()
	upgrades := 0
	for _, s := range c.sims {
		rep := s.stop()
		upgrades += rep.Upgrades
		if rep.UpgradedTwice != 0 {
			c.t.Errorf("devices upgraded twice: %v", rep.TwiceIDs)
		}
	}
	return upgrades
}
