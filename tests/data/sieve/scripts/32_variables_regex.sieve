require ["variables", "regex", "fileinto"];
if header :regex "subject" "([0-9]{4})-([0-9]+)" { fileinto "Inv${1}"; }
