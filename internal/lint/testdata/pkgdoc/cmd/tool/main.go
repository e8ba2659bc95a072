// Tool does one thing for the fixture.
package main
