{{/* Labels on every object: what config/default sets, and Helm's own. */}}
{{- define "keyward.labels" -}}
app.kubernetes.io/part-of: keyward
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The selector labels of a component (authn, controller). */}}
{{- define "keyward.selector" -}}
app.kubernetes.io/name: keyward
app.kubernetes.io/component: {{ . }}
{{- end -}}

{{- define "keyward.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/*
keyward.static renders the YAML documents of a file under files/ (copies of
config/ that make manifests keeps in step: generated CRDs and roles, the
admission policies) with the chart's labels, in the release's namespace.
Arguments: (list $ "files/path.yaml" annotations-dict).
*/}}
{{- define "keyward.static" -}}
{{- $root := index . 0 -}}
{{- $annotations := index . 2 -}}
{{- $text := $root.Files.Get (index . 1) -}}
{{- if not $text }}{{ fail (printf "chart file %s is missing" (index . 1)) }}{{ end -}}
{{- /* The records and size policies name the controller's ServiceAccount by namespace. */ -}}
{{- $text = replace "system:serviceaccount:keyward-system:" (printf "system:serviceaccount:%s:" $root.Release.Namespace) $text -}}
{{- range $doc := regexSplit "(?m)^---[ \t]*$" $text -1 }}
{{- $obj := fromYaml $doc }}
{{- if hasKey $obj "Error" }}{{ fail (printf "%s: %s" (index $ 1) $obj.Error) }}{{ end }}
{{- if $obj.kind }}
{{- if $obj.metadata.namespace }}{{ $_ := set $obj.metadata "namespace" $root.Release.Namespace }}{{ end }}
{{- $_ := set $obj.metadata "labels" (merge (default dict $obj.metadata.labels) (include "keyward.labels" $root | fromYaml)) }}
{{- if $annotations }}{{ $_ := set $obj.metadata "annotations" (merge (default dict $obj.metadata.annotations) $annotations) }}{{ end }}
---
{{ toYaml $obj }}
{{- end }}
{{- end }}
{{- end -}}
