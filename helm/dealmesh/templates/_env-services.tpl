{{/*
Each service's own settings. Takes (dict "root" $ "svc" name "values" $.Values.<svc>).
The keys are the ones services/<name>/src/config.rs declares.
*/}}

{{- define "dealmesh.env.ingest" -}}
{{- range .values.webhookSources }}
- name: {{ printf "DEALMESH_WEBHOOK_SECRET_%s" (.name | upper | replace "-" "_") }}
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "ingest.webhookSources[%s].existingSecret is required" .name) .existingSecret | quote }}
      key: {{ required (printf "ingest.webhookSources[%s].key is required" .name) .key | quote }}
{{- end }}
{{- end }}

{{- define "dealmesh.env.enrich" -}}
{{- end }}

{{- define "dealmesh.env.scoring" -}}
{{- end }}

{{- define "dealmesh.env.crm" -}}
{{- end }}

{{- define "dealmesh.env.notify" -}}
{{- end }}
