// This package starts its doc wrongly.
package wrong
