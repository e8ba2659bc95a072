// Tool is the wrong name for badtool.
package main
