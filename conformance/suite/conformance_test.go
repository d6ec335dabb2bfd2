// Package suite runs the official Gateway API conformance suite against
// Agimo. Options come from the suite's own flags (see conformance/run):
// GatewayClass, profile, implementation details, report output. The features
// under test are read from the GatewayClass's status.supportedFeatures, so
// what Agimo claims and what is tested are the same list.
package suite

import (
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
)

func TestConformance(t *testing.T) {
	conformance.RunConformance(t)
}
