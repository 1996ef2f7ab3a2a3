package controllers

import (
	"context"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// +kubebuilder:rbac:groups=keyward.dev,resources=apikeypolicies,verbs=create

// DefaultPolicy creates an ApiKeyPolicy when none of its name exists, once
// per start of the elected controller, and never changes an existing one.
//
// An install (kubectl apply -k, helm install) cannot hold an ApiKeyPolicy
// beside the CRD that defines it: the kind is unknown until the CRD is
// established, so the object would be refused. The controller creates it
// instead. Until it does, keys may be created with restricted scopes; the
// endpoint and the controller enforce the policy as soon as it exists, so
// such keys never use what it restricts.
type DefaultPolicy struct {
	Client client.Client
	Policy *kw.ApiKeyPolicy
	Log    logr.Logger
}

// ParsePolicy reads one ApiKeyPolicy from YAML.
func ParsePolicy(data []byte) (*kw.ApiKeyPolicy, error) {
	p := &kw.ApiKeyPolicy{}
	if err := yaml.UnmarshalStrict(data, p); err != nil {
		return nil, fmt.Errorf("read the default ApiKeyPolicy: %w", err)
	}
	if p.Kind != "ApiKeyPolicy" || p.Name == "" {
		return nil, fmt.Errorf("read the default ApiKeyPolicy: want kind ApiKeyPolicy with a name, got %q %q", p.Kind, p.Name)
	}
	return p, nil
}

// NeedLeaderElection: only the elected controller writes.
func (d *DefaultPolicy) NeedLeaderElection() bool { return true }

// Start creates the policy unless it exists, then returns. It retries
// while the API server is unreachable, the CRD not yet established or the
// controller's role not yet bound (an install applies them all at once).
func (d *DefaultPolicy) Start(ctx context.Context) error {
	err := wait.ExponentialBackoffWithContext(ctx, wait.Backoff{Duration: 100 * time.Millisecond, Factor: 2, Cap: 30 * time.Second, Steps: 1 << 30},
		func(ctx context.Context) (bool, error) {
			p := d.Policy.DeepCopy()
			err := d.Client.Create(ctx, p)
			switch {
			case err == nil:
				d.Log.Info("created the default ApiKeyPolicy", "name", p.Name)
				return true, nil
			case apierrors.IsAlreadyExists(err):
				return true, nil
			case apierrors.IsInvalid(err):
				return false, fmt.Errorf("create the default ApiKeyPolicy %s: %w", p.Name, err)
			}
			d.Log.Info("cannot create the default ApiKeyPolicy yet, retrying", "name", p.Name, "error", err.Error())
			return false, nil
		})
	if err != nil && ctx.Err() == nil {
		// The policy is a default, not a precondition: report and go on.
		d.Log.Error(err, "no default ApiKeyPolicy")
	}
	return nil
}
