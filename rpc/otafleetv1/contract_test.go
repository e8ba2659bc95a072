package otafleetv1_test

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
)

// pkg is the API's protobuf package.
const pkg = "otafleet.v1"

// streaming kinds of a method.
const (
	unary = iota
	clientStream
	serverStream
)

// contractMethods are the services and methods of shared/CONTRACT.md with
// their streaming kind.
var contractMethods = map[string]map[string]int{
	"ProductService": {"CreateProduct": unary, "GetProduct": unary, "ListProducts": unary},
	"DeviceService": {
		"CreateDevices": unary, "GetDevice": unary, "ListDevices": unary,
		"DeleteDevice": unary, "GetDeviceTimeline": unary,
	},
	"GroupService": {
		"CreateGroup": unary, "AddDevices": unary, "RemoveDevices": unary,
		"GetGroup": unary, "ListGroups": unary,
	},
	"PackageService": {
		"CreatePackage": unary, "UploadPackage": clientStream, "GetPackage": unary,
		"ListPackages": unary, "DeletePackage": unary,
	},
	"TaskService": {
		"CreateTask": unary, "GetTask": unary, "ListTasks": unary, "StopTask": unary,
		"RetryTask": unary, "ListTaskDevices": unary, "WatchTask": serverStream,
		"ListTaskCells": unary,
	},
}

// contractEnums are the enums of shared/CONTRACT.md with the values it names
// (each enum also needs its _UNSPECIFIED = 0).
var contractEnums = map[string][]string{
	"Protocol":         {"PROTOCOL_MQTT", "PROTOCOL_LWM2M"},
	"SoftwareProtocol": {"SOFTWARE_PROTOCOL_PCP"},
	"PackageType":      {"PACKAGE_TYPE_FIRMWARE", "PACKAGE_TYPE_SOFTWARE"},
	"TaskType":         {"TASK_TYPE_FIRMWARE_UPGRADE", "TASK_TYPE_SOFTWARE_UPGRADE"},
	"TaskStatus": {
		"TASK_STATUS_WAITING", "TASK_STATUS_PROCESSING", "TASK_STATUS_SUCCESS", "TASK_STATUS_FAIL",
		"TASK_STATUS_PARTIAL_SUCCESS", "TASK_STATUS_STOPPING", "TASK_STATUS_STOPPED",
	},
	"SubtaskStatus": {
		"SUBTASK_STATUS_WAITING", "SUBTASK_STATUS_PROCESSING", "SUBTASK_STATUS_SUCCESS",
		"SUBTASK_STATUS_FAIL", "SUBTASK_STATUS_FAIL_WAIT_RETRY", "SUBTASK_STATUS_STOPPED",
	},
}

// contractFields are the messages' fields of shared/CONTRACT.md: a field
// ending in "?" must have explicit presence (proto3 optional), one ending in
// "[]" must be repeated.
var contractFields = map[string][]string{
	"CreateProductRequest":      {"name", "protocol", "software_protocol?", "skip_version_check?"},
	"CreateProductResponse":     {"product"},
	"Product":                   {"product_id"},
	"CreateDevicesRequest":      {"product_id", "devices[]"},
	"NewDevice":                 {"device_id", "secret?", "psk?"},
	"CreateDevicesResponse":     {"device_ids[]"},
	"GetDeviceRequest":          {"device_id"},
	"GetDeviceResponse":         {"device"},
	"Device":                    {"device_id", "product_id", "online", "fw_version", "sw_version", "cell_id", "rsrp", "sinr"},
	"ListDevicesRequest":        {"page_size", "page_token"},
	"ListDevicesResponse":       {"devices[]", "next_page_token"},
	"GetDeviceTimelineRequest":  {"device_id", "reveal_tokens"},
	"GetDeviceTimelineResponse": {"entries[]"},
	"TimelineEntry":             {"time", "task_id", "kind", "detail"},
	"CreateGroupRequest":        {"name", "device_ids[]"},
	"CreateGroupResponse":       {"group"},
	"Group":                     {"group_id"},
	"CreatePackageRequest": {
		"product_id", "package_type", "version", "source_versions[]", "file_name", "content",
		"description?", "custom_info?", "omit_sign?",
	},
	"CreatePackageResponse":   {"package"},
	"Package":                 {"package_id", "size", "sha256"},
	"CreateTaskRequest":       {"name", "task_type", "package_id", "device_ids[]", "group_ids[]", "policy"},
	"Policy":                  {"schedule_time", "retry_count?", "retry_interval_minutes?", "window"},
	"CreateTaskResponse":      {"task"},
	"Task":                    {"task_id", "status", "progress"},
	"GetTaskRequest":          {"task_id"},
	"GetTaskResponse":         {"task"},
	"TaskProgress":            {"total", "waiting", "processing", "success", "fail", "fail_wait_retry", "stopped"},
	"StopTaskRequest":         {"task_id"},
	"RetryTaskRequest":        {"task_id"},
	"ListTaskDevicesRequest":  {"task_id", "status?", "page_size", "page_token"},
	"ListTaskDevicesResponse": {"devices[]", "next_page_token"},
	"TaskDevice":              {"device_id", "status", "stage", "failure_reason", "attempts", "status_desc", "device_description"},
	"WatchTaskRequest":        {"task_id"},
}

// apiFiles returns the registered files of package otafleet.v1.
func apiFiles(t *testing.T) []protoreflect.FileDescriptor {
	t.Helper()
	// Reference the package so its files are registered.
	_ = otafleetv1.File_otafleet_v1_task_proto
	var files []protoreflect.FileDescriptor
	protoregistry.GlobalFiles.RangeFilesByPackage(pkg, func(fd protoreflect.FileDescriptor) bool {
		files = append(files, fd)
		return true
	})
	if len(files) == 0 {
		t.Fatalf("no files registered for package %s", pkg)
	}
	return files
}

func TestContractMethods(t *testing.T) {
	apiFiles(t)
	for svc, methods := range contractMethods {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(pkg + "." + svc))
		if err != nil {
			t.Errorf("service %s: %v", svc, err)
			continue
		}
		sd, ok := d.(protoreflect.ServiceDescriptor)
		if !ok {
			t.Errorf("%s is a %T, not a service", svc, d)
			continue
		}
		for name, kind := range methods {
			md := sd.Methods().ByName(protoreflect.Name(name))
			if md == nil {
				t.Errorf("%s has no method %s", svc, name)
				continue
			}
			got := unary
			switch {
			case md.IsStreamingClient() && md.IsStreamingServer():
				got = -1
			case md.IsStreamingClient():
				got = clientStream
			case md.IsStreamingServer():
				got = serverStream
			}
			if got != kind {
				t.Errorf("%s.%s has streaming kind %d, want %d", svc, name, got, kind)
			}
		}
	}
	// The paths clients call.
	for got, want := range map[string]string{
		otafleetv1connect.TaskServiceWatchTaskProcedure:           "/otafleet.v1.TaskService/WatchTask",
		otafleetv1connect.PackageServiceUploadPackageProcedure:    "/otafleet.v1.PackageService/UploadPackage",
		otafleetv1connect.DeviceServiceCreateDevicesProcedure:     "/otafleet.v1.DeviceService/CreateDevices",
		otafleetv1connect.ProductServiceCreateProductProcedure:    "/otafleet.v1.ProductService/CreateProduct",
		otafleetv1connect.GroupServiceCreateGroupProcedure:        "/otafleet.v1.GroupService/CreateGroup",
		otafleetv1connect.TaskServiceListTaskDevicesProcedure:     "/otafleet.v1.TaskService/ListTaskDevices",
		otafleetv1connect.DeviceServiceGetDeviceTimelineProcedure: "/otafleet.v1.DeviceService/GetDeviceTimeline",
	} {
		if got != want {
			t.Errorf("procedure %q, want %q", got, want)
		}
	}
}

func TestContractEnums(t *testing.T) {
	apiFiles(t)
	for enum, values := range contractEnums {
		ed, err := protoregistry.GlobalTypes.FindEnumByName(protoreflect.FullName(pkg + "." + enum))
		if err != nil {
			t.Errorf("enum %s: %v", enum, err)
			continue
		}
		vals := ed.Descriptor().Values()
		if zero := vals.ByNumber(0); zero == nil || string(zero.Name()) != upperSnake(enum)+"_UNSPECIFIED" {
			t.Errorf("enum %s: value 0 must be %s_UNSPECIFIED", enum, upperSnake(enum))
		}
		for _, v := range values {
			vd := vals.ByName(protoreflect.Name(v))
			if vd == nil {
				t.Errorf("enum %s has no value %s", enum, v)
			} else if vd.Number() == 0 {
				t.Errorf("enum %s: %s must not be 0", enum, v)
			}
		}
	}
}

func TestContractFields(t *testing.T) {
	apiFiles(t)
	for msg, fields := range contractFields {
		mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(pkg + "." + msg))
		if err != nil {
			t.Errorf("message %s: %v", msg, err)
			continue
		}
		fds := mt.Descriptor().Fields()
		for _, f := range fields {
			name, optional := strings.CutSuffix(f, "?")
			name, repeated := strings.CutSuffix(name, "[]")
			fd := fds.ByName(protoreflect.Name(name))
			if fd == nil {
				t.Errorf("%s has no field %s", msg, name)
				continue
			}
			if optional && (!fd.HasPresence() || fd.IsList()) {
				t.Errorf("%s.%s must have presence (optional)", msg, name)
			}
			if repeated != fd.IsList() {
				t.Errorf("%s.%s: repeated is %v, want %v", msg, name, fd.IsList(), repeated)
			}
		}
	}
}

// TestStyle checks what buf lint's STANDARD rules and CONTRACT.md's JSON
// names need, in case buf is not at hand: Request/Response message names,
// enum value prefixes, lower_snake_case fields with lowerCamelCase JSON
// names, and times as google.protobuf.Timestamp.
func TestStyle(t *testing.T) {
	for _, fd := range apiFiles(t) {
		svcs := fd.Services()
		for i := range svcs.Len() {
			sd := svcs.Get(i)
			if !strings.HasSuffix(string(sd.Name()), "Service") {
				t.Errorf("service %s: name must end in Service", sd.FullName())
			}
			ms := sd.Methods()
			for j := range ms.Len() {
				md := ms.Get(j)
				if in, want := md.Input().FullName(), protoreflect.FullName(pkg+"."+string(md.Name())+"Request"); in != want {
					t.Errorf("%s takes %s, want %s", md.FullName(), in, want)
				}
				if out, want := md.Output().FullName(), protoreflect.FullName(pkg+"."+string(md.Name())+"Response"); out != want {
					t.Errorf("%s returns %s, want %s", md.FullName(), out, want)
				}
			}
		}
		enums := fd.Enums()
		for i := range enums.Len() {
			ed := enums.Get(i)
			prefix := upperSnake(string(ed.Name())) + "_"
			vals := ed.Values()
			for j := range vals.Len() {
				if v := vals.Get(j); !strings.HasPrefix(string(v.Name()), prefix) {
					t.Errorf("enum value %s: want prefix %s", v.FullName(), prefix)
				}
			}
		}
		msgs := fd.Messages()
		for i := range msgs.Len() {
			fields := msgs.Get(i).Fields()
			for j := range fields.Len() {
				f := fields.Get(j)
				name := string(f.Name())
				if !lowerSnake.MatchString(name) {
					t.Errorf("field %s: name is not lower_snake_case", f.FullName())
				}
				if got, want := f.JSONName(), lowerCamel(name); got != want {
					t.Errorf("field %s: JSON name %q, want %q", f.FullName(), got, want)
				}
				if strings.HasSuffix(name, "_time") || name == "time" {
					if f.Message() == nil || f.Message().FullName() != "google.protobuf.Timestamp" {
						t.Errorf("field %s: times are google.protobuf.Timestamp", f.FullName())
					}
				}
			}
		}
	}
}

// TestJSON checks Connect JSON as users see it: lowerCamelCase names and
// enums by full name.
func TestJSON(t *testing.T) {
	resp := &otafleetv1.GetTaskResponse{Task: &otafleetv1.Task{
		TaskId:     "t1",
		Status:     otafleetv1.TaskStatus_TASK_STATUS_PARTIAL_SUCCESS,
		Progress:   &otafleetv1.TaskProgress{Total: 3, FailWaitRetry: 1},
		CreateTime: timestamppb.New(timestamppb.Now().AsTime()),
	}}
	b, err := protojson.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"taskId"`, `"TASK_STATUS_PARTIAL_SUCCESS"`, `"failWaitRetry"`, `"createTime"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON %s lacks %s", b, want)
		}
	}
	var req otafleetv1.ListTaskDevicesRequest
	if err := protojson.Unmarshal([]byte(`{"taskId":"t1","status":"SUBTASK_STATUS_FAIL_WAIT_RETRY","pageSize":50}`), &req); err != nil {
		t.Fatal(err)
	}
	if req.GetTaskId() != "t1" || req.Status == nil || req.GetStatus() != otafleetv1.SubtaskStatus_SUBTASK_STATUS_FAIL_WAIT_RETRY || req.GetPageSize() != 50 {
		t.Errorf("decoded %v", &req)
	}
}

// TestComments checks that every declaration in the .proto files carries a
// comment on the line before it or at its end (the generated descriptors
// drop comments, so this reads the sources).
func TestComments(t *testing.T) {
	paths, err := filepath.Glob("../proto/otafleet/v1/*.proto")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no .proto files: %v", err)
	}
	sort.Strings(paths)
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		prevComment := false
		for n := 1; sc.Scan(); n++ {
			line := strings.TrimSpace(sc.Text())
			if declaration.MatchString(line) && !prevComment && !strings.Contains(line, "//") {
				t.Errorf("%s:%d: %q has no comment", p, n, line)
			}
			prevComment = strings.HasPrefix(line, "//")
		}
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
}

var (
	lowerSnake  = regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)
	declaration = regexp.MustCompile(`^(service|rpc|message|enum|oneof)\b|^[A-Z0-9_]+ = \d+;|^(optional |repeated )?[\w.]+ \w+ = \d+;`)
)

// upperSnake turns "TaskStatus" into "TASK_STATUS".
func upperSnake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}

// lowerCamel turns "fail_wait_retry" into "failWaitRetry".
func lowerCamel(s string) string {
	parts := strings.Split(s, "_")
	for i := 1; i < len(parts); i++ {
		if parts[i] != "" {
			parts[i] = strings.ToUpper(parts[i][:1]) + parts[i][1:]
		}
	}
	return strings.Join(parts, "")
}
