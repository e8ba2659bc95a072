// Package rpc serves otafleet's Connect API (protobuf package otafleet.v1):
// the ProductService, DeviceService, GroupService and PackageService handlers
// over a persistence.Registry, with the live device state read from the
// actors.Engine; TaskService (tasks.go) over the engine when Deps.Engine is
// set; and GetDeviceTimeline (timeline.go), rendered from the device's
// journal in Deps.Store, with the download token of each URI a device was
// given masked by maskToken (mask.go) unless the request sets reveal_tokens.
// ListTasks reads the registry's task index. A task device's failure_reason
// and status_desc come from one rule, subtaskTexts (tasks.go).
//
// A task's rules and limits (device count, retry policy, schedule horizon,
// window) are taskfsm's: TaskService checks what is the API's own (texts,
// IDs, unset optional fields, that referenced objects exist, group
// expansion) and checks the rest with taskfsm.Config's validation against
// the engine's configuration before it creates the task.
//
// ListTaskCells (taskcells.go) reads the cell views the engine's cell actors
// publish; UploadPackageChunk (chunkupload.go) feeds a package's blob across
// unary calls through the same blobPipe as the UploadPackage stream.
//
// NewHandler returns an http.Handler that mounts every service at
// /otafleet.v1.<Service>/<Method>. Each call must carry
// "Authorization: Bearer <token>"; without it, or with another token, it fails
// with unauthenticated. With Deps.Console (console.go) a call may instead
// carry the web console's session cookie with the session's CSRF token in
// X-CSRF-Token; ConsoleAuth.Mount serves the login, logout and session
// endpoints under /ui/. Request bodies are bounded (see MaxRequestBytes).
//
// Errors map to Connect codes in one place (errors.go): validation failures
// are invalid_argument naming the offending field (devices[3].device_id: ...;
// a taskfsm.FieldError keeps its field and problem),
// unknown IDs not_found, duplicates already_exists, records still referenced
// failed_precondition, oversized files resource_exhausted, and anything else
// internal, logged but never described to the client. Messages are in the
// user's words: the Go package and kind of an error from below
// ("persistence: not found: ", "taskfsm: invalid transition: ") are left out
// by an interceptor (plainErrors), since the code says the kind.
//
// The handler speaks Connect, gRPC and gRPC-Web; serve it over HTTP/1.1 and
// h2c (http.Server.Protocols with SetUnencryptedHTTP2) so that gRPC clients
// work without TLS.
package rpc
