module github.com/otafleet/otafleet

go 1.26

require (
	github.com/cockroachdb/datadriven v1.0.3
	github.com/pmezard/go-difflib v1.0.0
	google.golang.org/protobuf v1.36.11
)
