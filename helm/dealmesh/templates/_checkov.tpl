{{/*
Checks of the checkov security scan this chart does not meet, each with the
reason, written once here and attached as `checkov.io/skipN` annotations to
exactly the resources it concerns (never a blanket skip). The chart README
lists them too; deploy/tests/test_checkov.py runs the scan.
*/}}
{{- define "dealmesh.checkovReasons" -}}
CKV_K8S_43: "A digest is release-specific: set image.digest (or a digest in tests.image) to pin one; by default the image follows the chart's appVersion tag."
CKV_K8S_15: "IfNotPresent with versioned tags or digests is deliberate: Always would make every restart depend on the registry; set image.pullPolicy to Always if you deploy moving tags."
CKV_K8S_35: "The services read their configuration, secrets included, only from the environment; the values come from existing Secrets by secretKeyRef and never appear in a manifest."
CKV_K8S_8: "A run-to-completion hook, test or scheduled pod serves nothing to probe."
CKV_K8S_9: "A run-to-completion hook, test or scheduled pod serves nothing to probe."
CKV_K8S_31: "The pod template sets seccompProfile RuntimeDefault; for a CronJob whose pod template has metadata the check reads only the retired seccomp annotation."
CKV2_K8S_6: "NetworkPolicies are opt-in (networkPolicy.enabled) because their peers are cluster-specific; when enabled every pod of the release is selected by one."
{{- end }}

{{/* Annotations skipping .ids, each with its reason. Takes (dict "root" $ "ids" (list ...)). */}}
{{- define "dealmesh.checkovSkips" -}}
{{- $reasons := include "dealmesh.checkovReasons" . | fromYaml }}
{{- range $i, $id := .ids }}
{{- if $i }}{{ "\n" }}{{ end }}
{{- printf "checkov.io/skip%d" (add1 $i) }}: {{ printf "%s=%s" $id (index $reasons $id) | quote }}
{{- end }}
{{- end }}

{{/* The skips of a pod running `image`: the digest check only without a digest. */}}
{{- define "dealmesh.checkovImageSkips" -}}
{{- $ids := list }}
{{- if not (contains "@sha256:" .image) }}{{ $ids = append $ids "CKV_K8S_43" }}{{ end }}
{{- if ne .pullPolicy "Always" }}{{ $ids = append $ids "CKV_K8S_15" }}{{ end }}
{{- toJson $ids }}
{{- end }}
