// Package iotda is a fixture wire codec of an adapter.
package iotda

const Up = "up"
